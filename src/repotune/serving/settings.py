"""What one ``repotune serve`` process allows: limits, batching knobs and who may call it.

Light on purpose (no torch, no kserve): the command line reads its defaults from here.

REPOTUNE_SERVE_TOKENS   comma-separated bearer tokens; when set, every route but health and readiness
                        needs ``Authorization: Bearer TOKEN`` (the upload API's convention)
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from repotune.decoding import LINE_REPEAT_PENALTY, check_confidence, check_line_penalty
from repotune.errors import RepotuneError

TOKENS_ENV = "REPOTUNE_SERVE_TOKENS"


class Switch(StrEnum):
    """``on``, ``off``, or ``auto``: as the model says (a command-line choice)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"

    @property
    def setting(self) -> bool | None:
        return None if self is Switch.AUTO else self is Switch.ON


@dataclass(frozen=True)
class ServeSettings:
    """Limits, batching knobs and authentication of one served model."""

    max_batch_size: int = 8
    """Most requests (rows) in one ``generate`` call."""
    max_tokens: int = 512
    """Server cap on ``max_tokens`` per request, in tokens; larger requests get a 400."""
    default_max_tokens: int = 16
    """``max_tokens`` of a completions request that sets none (OpenAI's default), in tokens."""
    batch_wait_ms: float = 5.0
    """How long the worker waits for more requests before it starts a batch, in milliseconds."""
    turn_tokens: int = 32
    """Tokens a running batch writes before it gives way to requests waiting behind it (its unfinished
    rows resume after them, ``repotune.serving.batching``); 0: a batch runs to its end however long."""
    prefix_cache_tokens: int = 16
    """Fewest prompt tokens a request must share with one of the last sequences served for their keys
    and values to be reused, the rest of the prompt only being read (``repotune.kvcache``); 0: every
    prompt is read whole."""
    max_queue: int = 256
    """Most generations waiting for a batch; a request that does not fit whole gets a 429."""
    max_generations: int = 32
    """Most generations one request may ask for (prompts times ``n``, or KServe instances): a fair
    share of the queue, so one request cannot fill it; more get a 400."""
    request_timeout_s: float = 120.0
    """Seconds a request may take from arrival to its last token (queue wait included); then a 504."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted, in bytes; larger bodies get a 413."""
    max_json_depth: int = 32
    """Deepest nesting of arrays and objects a request body may have; deeper bodies get a 400 before
    they are parsed (chat messages with content parts, the deepest real requests, nest 5 levels)."""
    device: str | None = None
    """``cuda``, ``cuda:1``, ``cpu``...; default: CUDA when available, else the CPU."""
    tokens: tuple[str, ...] = ()
    """Bearer tokens accepted; empty: no authentication (allowed on a loopback address, or with
    ``insecure_no_auth``)."""
    insecure_no_auth: bool = False
    """Serve on a non-loopback address without tokens; set only by the explicit ``--insecure-no-auth``."""
    line_repeat_penalty: float = LINE_REPEAT_PENALTY
    """The line repeat penalty (``repotune.decoding``) of completions whose request sets neither
    ``presence_penalty`` nor ``frequency_penalty``: the evaluate stage scores with the same default.
    Chat replies are prose, and decode without it. 0 turns it off."""
    retry_line_above: bool = True
    """Decode a greedy completion whose first line writes the line above the cursor again a second time,
    from its least certain token, and from the next ones while it copies (``repotune.decoding``), as the
    evaluate stage scores by default; the first line is streamed once it is judged. False: never."""
    min_confidence: float = 0.0
    """End a greedy completion before its first line whose confidence (the geometric mean of its
    tokens' probabilities) is below this, unless the request sets its own ``min_confidence``: an
    editor then shows only the lines the model was sure of, or nothing. The evaluate report's
    "Showing only confident completions" table gives the thresholds of the most confident half and
    quarter, with their exact match. 0: off."""
    retrieval: bool | None = None
    """Put context retrieved from the model folder's index (``MODEL/retrieval/``) in front of completion
    prompts unless a request says otherwise: ``True`` (needs the index), ``False``, or ``None``: when the
    model was trained with retrieved context."""
    fim: bool | None = None
    """How a completion request with a ``suffix`` (or a prompt in the ``<fim_prefix>…<fim_suffix>…
    <fim_middle>`` form editors send) is answered: ``True``, as a FIM prompt (needs FIM tokens);
    ``False``, from the code before the cursor alone, to the end of its line; ``None``: as a FIM prompt
    when the model has FIM tokens. The evaluate stage says which the model does better
    (``decision.fim``)."""

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_tokens", "default_max_tokens", "max_queue", "max_generations",
                     "max_body_bytes", "max_json_depth"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RepotuneError(f"{_flag(name)} must be a positive integer, got {value!r}")
        check_line_penalty(self.line_repeat_penalty)
        check_confidence(self.min_confidence, "--min-confidence")
        if self.batch_wait_ms < 0:
            raise RepotuneError(f"--batch-wait-ms must not be negative, got {self.batch_wait_ms!r}")
        turn = self.turn_tokens
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
            raise RepotuneError(f"--turn-tokens must be 0 or a positive integer, got {self.turn_tokens!r}")
        shared = self.prefix_cache_tokens
        if isinstance(shared, bool) or not isinstance(shared, int) or shared < 0:
            raise RepotuneError(f"--prefix-cache-tokens must be 0 or a positive integer, got {shared!r}")
        if self.request_timeout_s <= 0:
            raise RepotuneError(f"--request-timeout must be positive, got {self.request_timeout_s!r}")
        if self.max_generations > self.max_queue:
            raise RepotuneError(
                f"--max-generations ({self.max_generations}) must not exceed --max-queue ({self.max_queue}): "
                "a request that may ask for more than the queue holds could never be served; give "
                f"--max-generations {self.max_queue} (or less) with it"
            )
        if self.device is not None:
            check_device(self.device)
        if any(not token or token != token.strip() or "," in token for token in self.tokens):
            raise RepotuneError(f"{TOKENS_ENV} has an empty token or one with surrounding spaces")

    def check_exposure(self, host: str) -> None:
        """Refuse to serve without authentication on an address other machines can reach."""
        if self.tokens or self.insecure_no_auth or is_loopback(host):
            return
        raise RepotuneError(
            f"--host {host} would expose the model server without authentication: set {TOKENS_ENV} "
            "(comma-separated bearer tokens), or pass --insecure-no-auth when something in front of it "
            "(a service mesh, an authenticating proxy) checks callers"
        )


def check_device(device: str) -> None:
    """Refuses a device name torch does not know (``tpu``) before the model loads, not after."""
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise RepotuneError(f"--device {device}: not a torch device; use cpu, cuda or cuda:N") from None


def tokens_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The bearer tokens in ``REPOTUNE_SERVE_TOKENS`` (comma-separated; blanks around commas ignored)."""
    raw = (os.environ if environ is None else environ).get(TOKENS_ENV, "")
    return tuple(token.strip() for token in raw.split(",") if token.strip())


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): only this machine reaches them."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_NO_FLAG = frozenset({"default_max_tokens", "max_json_depth"})


def _flag(name: str) -> str:
    """The ``repotune serve`` option that sets the field ``name`` (the field itself where none does)."""
    return name if name in _NO_FLAG else "--" + name.replace("_", "-")
