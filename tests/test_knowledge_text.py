"""Wiki, tracker and diagram records as text: the markup renderers and the training transforms."""

from __future__ import annotations

import random
from collections import Counter

from repotune.data.transforms import TransformConfig, example_text, issue_messages, wiki_text
from repotune.records import Kind, Record
from repotune.sources.adf import adf_to_markdown, wiki_to_markdown
from repotune.sources.threads import ThreadComment, pseudonym, thread_markdown
from repotune.sources.xhtml import storage_to_markdown


def _doc(*content: dict) -> dict:
    return {"type": "doc", "version": 1, "content": list(content)}


def test_adf_marks_keep_spaces_outside_and_inline_nodes_render():
    doc = _doc(
        {
            "type": "paragraph",
            "content": [
                {"type": "text", "text": "Ship "},
                {"type": "text", "text": "on Friday ", "marks": [{"type": "strong"}, {"type": "em"}]},
                {"type": "text", "text": "never", "marks": [{"type": "strike"}]},
                {"type": "hardBreak"},
                {"type": "status", "attrs": {"text": "BLOCKED", "color": "red"}},
                {"type": "text", "text": " since "},
                {"type": "date", "attrs": {"timestamp": "1714521600000"}},
                {"type": "text", "text": " "},
                {"type": "inlineCard", "attrs": {"url": "https://acme.atlassian.net/browse/OPS-1"}},
            ],
        },
        {
            "type": "taskList",
            "attrs": {"localId": "t"},
            "content": [
                {
                    "type": "taskItem",
                    "attrs": {"state": "DONE"},
                    "content": [{"type": "text", "text": "Rollback"}],
                },
                {
                    "type": "taskItem",
                    "attrs": {"state": "TODO"},
                    "content": [{"type": "text", "text": "Postmortem"}],
                },
            ],
        },
        {
            "type": "expand",
            "attrs": {"title": "Logs"},
            "content": [
                {"type": "codeBlock", "attrs": {}, "content": [{"type": "text", "text": "OOMKilled"}]}
            ],
        },
        {"type": "rule"},
        {
            "type": "blockquote",
            "content": [{"type": "paragraph", "content": [{"type": "text", "text": "quoted"}]}],
        },
    )
    skipped: Counter[str] = Counter()
    assert adf_to_markdown(doc, skipped) == (
        "Ship ***on Friday*** ~~never~~\n[BLOCKED] since 2024-05-01 https://acme.atlassian.net/browse/OPS-1\n\n"
        "- [x] Rollback\n- [ ] Postmortem\n\n**Logs**\n\n```\nOOMKilled\n```\n\n---\n\n> quoted"
    )
    assert adf_to_markdown(None) == "" and adf_to_markdown("plain") == "plain"


def test_wiki_markup_mentions_become_handles():
    assert wiki_to_markdown("Ask [~jsmith] or [~accountid:5b10ac8d]: *now*") == "Ask @user or @user: **now**"


def test_storage_noformat_unknown_macros_and_emoticons():
    xhtml = (
        '<p>Hi <ac:emoticon ac:name="smile" /></p>'
        '<ac:structured-macro ac:name="noformat"><ac:plain-text-body><![CDATA[raw <b>text</b>]]>'
        "</ac:plain-text-body></ac:structured-macro>"
        '<ac:structured-macro ac:name="custom-callout"><ac:parameter ac:name="x">1</ac:parameter>'
        "<ac:rich-text-body><p>Kept body.</p></ac:rich-text-body></ac:structured-macro>"
        '<ac:structured-macro ac:name="children" />'
        '<ac:structured-macro ac:name="gallery" />'
    )
    skipped: Counter[str] = Counter()
    assert storage_to_markdown(xhtml, skipped) == "Hi\n\n```\nraw <b>text</b>\n```\n\nKept body."
    assert skipped == {"attachment": 1}


def test_jira_thread_layout_parses_into_the_same_conversation():
    source = "jira:OPS"
    asker, helper = pseudonym(source, "712020:a"), pseudonym(source, "712020:b")
    assert asker != helper and asker == pseudonym(source, "712020:a") and asker.startswith("user-")
    content = thread_markdown(
        "Disk full on build agents",
        "Issue OPS-12 · Incident · Resolved · resolution: Fixed",
        asker,
        "2024-02-01",
        "Agents 3 and 4 stopped.",
        [
            ThreadComment(helper, "2024-02-01", "Cleared the docker cache."),
            ThreadComment(asker, "2024-02-02", "Back to normal."),
        ],
    )
    record = Record(content=content, kind=Kind.ISSUE, source=source, id="x", meta={"author": asker})
    assert issue_messages(record) == [
        {"role": "user", "content": "# Disk full on build agents\n\nAgents 3 and 4 stopped."},
        {"role": "assistant", "content": "Cleared the docker cache."},
        {"role": "user", "content": "Back to normal."},
    ]


def test_wiki_pages_and_diagrams_become_training_text():
    page = Record(
        content="# Storage layer\n\nOrders are partitioned by month.\n",
        kind=Kind.WIKI_PAGE,
        source="confluence:ENG",
        id="p",
        meta={"breadcrumb": ["Engineering", "Architecture", "Storage layer"]},
    )
    assert wiki_text(page) == (
        "Engineering / Architecture / Storage layer\n\n# Storage layer\n\nOrders are partitioned by month.\n"
    )
    diagram = Record(
        content="Mermaid diagram\nComponents: A, B\nA -> B\n",
        kind=Kind.DIAGRAM,
        source="demo",
        id="d",
        file_path="docs/flow.mmd",
    )
    config, rng = TransformConfig(), random.Random(0)
    assert (
        example_text(diagram, None, config, rng)
        == "# File: docs/flow.mmd\nMermaid diagram\nComponents: A, B\nA -> B\n"
    )
    assert example_text(page, None, config, rng) == wiki_text(page)
