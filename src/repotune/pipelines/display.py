"""What ``repotune run`` shows while the pipeline runs, and the full log it keeps in the run folder.

kfp.local prints everything to standard output: each task's executor input as JSON, its streamed
output (warnings and progress bars included), its outputs, horizontal rules and colour codes, about
570 lines for the demo. :class:`RunOutput` takes that stream (``contextlib.redirect_stdout``), writes
all of it, colour codes removed, to ``RUN_DIR/run.log``, and shows a person only:

- one line per stage when it ends: its state, its time and the step's own summary (the last line a
  step prints that starts with its name, ``train: 40 steps of lora ...``; see ``components/steps.py``);
- progress of long steps: lines with ``N/M`` (``step 10/40  loss 2.91 ... ETA 2.1 min``) each time
  they pass another quarter of M, and a step's ``estimate:`` line; on a terminal, the latest progress
  line instead, updating beside a spinner and the stage's elapsed time;
- the scoring progress of score-base and evaluate (``candidate: line completion: 16/30, about 40 s
  left``), at most one line every 30 seconds; on a terminal, the latest, on the live line;
- the checkpoint a train step resumes from, when it goes on from an earlier run's;
- for a failed step, the error it ended with (or "interrupted", when the run was stopped).

On a terminal the running stage is a rich live line; anywhere else (a file, CI, ``| tee``) the output is
plain lines without colour or cursor codes.
"""

from __future__ import annotations

import io
import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FRACTION = re.compile(r"\b(\d+)/(\d+)\b")
_ERROR = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt|Exit))\b:? ?(.*)$")
_WORDED = frozenset({"RepotuneError", "PublishError", "RolledBack", "WaitFailed"})
"""repotune's errors, whose messages say what went wrong and what to do (``repotune.errors``)."""
# kfp.local's own lines in the stream: its log records (``12:00:00.123 - INFO - ...``), the task's
# executor input, rules, and the outputs it lists; none is a step's own output.
_KFP_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - [A-Z]+ - ")
# a train step that goes on from an earlier run's checkpoint (repotune.train.stage, or restored from
# the object store by repotune.train.finetune): shown as it is said
_RESUMED = re.compile(r"^(?:resuming from checkpoint-\d+ of an earlier run|restored checkpoint-\d+ from )")
# what a step's stream holds besides its own words: kfp's executor JSON, a line at a time ("}", "],",
# '"parameterValues": {'), which is no error message
_DEBRIS = re.compile(r"""^(?:[\[\]{}(),:\s]*|"[^"]*"\s*:.*|[\[{].*)$""")
_QUARTERS = 4
_NAME = 10
"""Width of the stage name column (``score-base``)."""
_UNSTRUCTURED_PROGRESS_EVERY_S = 60.0
# The scoring steps' progress (repotune.evaluate.generate.Progress: ``candidate: line completion:
# 16/30, about 40 s left``, ``... 30/30 in 1 min 02 s``): one counter per arm and task, each several
# lines a minute, so a stage shows one of them every so often rather than quarters of each.
_SCORING_STAGES = frozenset({"score-base", "evaluate"})
_SCORED = re.compile(r"\b\d+/\d+\b[^,]*(?:, about .+ left| in \d.*)$")
_SCORING_PROGRESS_EVERY_S = 30.0


def duration(seconds: float) -> str:
    """``42 s``, ``3:07`` (minutes), ``1:02:09`` (hours)."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class _Stage:
    def __init__(self, name: str, started: float) -> None:
        self.name = name
        self.started = started
        self.summary = ""
        self.tail: deque[str] = deque(maxlen=40)
        self.shown_quarter = 0
        self.last_unstructured = 0.0
        self.last_scoring = float("-inf")


class RunOutput(io.TextIOBase):
    """A text stream (for ``redirect_stdout``) that logs every line and shows the run condensed.

    ``emit`` prints a line for a person (plain text); with a terminal ``console`` the running stage is
    a live line on it instead, and finished stages are printed above it.
    """

    def __init__(
        self,
        log_path: Path,
        emit: Callable[[str], None],
        console: Console | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: TextIO = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._emit = emit
        self._buffer = ""
        self._stage: _Stage | None = None
        self.summaries: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._interrupted = False
        if console is not None and console.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            # no stdout/stderr redirection of rich's own: this object already is standard output
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._progress.start()

    # the stream

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # libraries that colour a terminal's output leave this stream plain

    def write(self, text: str) -> int:
        self._buffer += text
        # a carriage return ends a line too: a progress bar's redraws become lines of their own
        *lines, self._buffer = re.split(r"\r\n|\r|\n", self._buffer)
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        if not self._log.closed:
            self._log.flush()

    def close(self) -> None:
        if self._buffer:
            self._line(self._buffer)
            self._buffer = ""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if not self._log.closed:
            self._log.close()
        super().close()

    # what the run reports

    def note(self, text: str) -> None:
        """A line of the runner's own: shown and logged."""
        self._write_log(text)
        self._show(text)

    def interrupted(self) -> None:
        """The run was stopped (Ctrl-C, SIGTERM): a stage that fails now says so, not its last line."""
        self._interrupted = True

    def stage(self, name: str, state: str) -> None:
        """A stage changed state (from :class:`repotune.pipelines.local.StatusWriter`)."""
        if state == "running":
            if self._stage is None or self._stage.name != name:
                self._stage = _Stage(name, self._clock())
                if self._progress is not None:
                    self._task = self._progress.add_task(f"{name:<{_NAME}} running", total=None)
            return
        current = self._stage if self._stage is not None and self._stage.name == name else None
        elapsed = self._clock() - current.started if current is not None else 0.0
        if self._progress is not None and self._task is not None and current is not None:
            self._progress.remove_task(self._task)
            self._progress.refresh()  # else the line above is drawn again until the next refresh
            self._task = None
        detail = ""
        if state == "cached":
            detail = "reused: same inputs as an earlier run (kfp.local cache)"
        elif state == "skipped":
            detail = "the candidate was not promoted" if name == "deploy" else ""
        elif current is not None:
            if state == "failed":
                error = "interrupted" if self._interrupted else self._error(current)
                self.failures[name] = error
                detail = error
            else:
                detail = current.summary
                self.summaries[name] = detail
        timing = duration(elapsed) if current is not None and state in ("succeeded", "failed") else ""
        self._show(f"{name:<{_NAME}} {state:<10} {timing:>7}  {detail}".rstrip())
        if current is not None:
            self._stage = None

    # internals

    def _write_log(self, line: str) -> None:
        if not self._log.closed:
            self._log.write(line + "\n")

    def _show(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            self._emit(line)

    def _line(self, raw: str) -> None:
        line = ANSI.sub("", raw)
        self._write_log(line)
        stage = self._stage
        if stage is None or _KFP_RECORD.match(line):
            return
        # kfp.local indents a task's streamed output by four spaces
        text = line[4:] if line.startswith("    ") else line
        text = text.strip()
        if not text:
            return
        stage.tail.append(text)
        if text.startswith(f"{stage.name}: "):
            stage.summary = text[len(stage.name) + 2 :]
        elif text.startswith("estimate: "):
            self._progress_line(stage, text, force=True)
        elif _RESUMED.match(text):
            self._show(f"{stage.name:<{_NAME}} {text}")
        elif "ETA" in text or text.startswith("step "):
            self._progress_line(stage, text)
        elif stage.name in _SCORING_STAGES and _SCORED.search(text):
            self._scoring_line(stage, text)

    def _scoring_line(self, stage: _Stage, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=f"{stage.name:<{_NAME}} {text}", refresh=True)
            return
        now = self._clock()
        if now - stage.last_scoring < _SCORING_PROGRESS_EVERY_S:
            return
        stage.last_scoring = now
        self._emit(f"{stage.name:<{_NAME}} {text}")

    def _progress_line(self, stage: _Stage, text: str, *, force: bool = False) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=f"{stage.name:<{_NAME}} {text}", refresh=True)
            return
        fraction = _FRACTION.search(text)
        if force:
            pass
        elif fraction is not None and int(fraction.group(2)) > 0:
            done, total = int(fraction.group(1)), int(fraction.group(2))
            quarter = min(_QUARTERS, done * _QUARTERS // total)
            if quarter <= stage.shown_quarter:
                return
            stage.shown_quarter = quarter
        else:
            now = self._clock()
            if now - stage.last_unstructured < _UNSTRUCTURED_PROGRESS_EVERY_S:
                return
            stage.last_unstructured = now
        self._emit(f"{stage.name:<{_NAME}} {text}")

    @staticmethod
    def _error(stage: _Stage) -> str:
        """The exception a failed step ended with (its last ``...Error: message`` line); repotune's own
        errors, worded for people, without their class name."""
        for text in reversed(stage.tail):
            match = _ERROR.match(text)
            if match is not None and match.group(2):
                if match.group(1) in _WORDED:
                    return match.group(2)
                return f"{match.group(1)}: {match.group(2)}"
        said = (text for text in reversed(stage.tail) if not _DEBRIS.match(text))
        return next(said, f"no error message (see {stage.name}'s output in the full log)")
