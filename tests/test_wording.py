"""Counts in printed lines read as English: one secret, two secrets."""

import pytest

from repotune.wording import counted


@pytest.mark.unit
@pytest.mark.parametrize(
    ("n", "one", "many", "text"),
    [
        (1, "secret", None, "1 secret"),
        (0, "secret", None, "0 secrets"),
        (1_200, "line", None, "1,200 lines"),
        (2, "issue or page", "issues and pages", "2 issues and pages"),
        (1, "issue or page", "issues and pages", "1 issue or page"),
    ],
)
def test_counted(n, one, many, text):
    assert counted(n, one, many) == text
