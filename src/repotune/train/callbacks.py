"""Trainer callbacks: progress with loss and ETA, a wall-clock budget, tracking, and the run's history.

The Trainer's log history (``state.log_history``) is saved in every checkpoint's trainer_state.json and
restored on resume: what a summary needs from the whole run (every step's loss, the base model's
held-out loss) is read from there, so a resumed run reports what an uninterrupted one does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from repotune.tracking import Tracker

# The first steps include warm-up costs (allocations, kernel selection); the estimate skips them.
_ESTIMATE_AFTER_STEPS = 3


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def real_tokens(state, real_token_fraction: float) -> float:
    """Real tokens trained on so far: the Trainer's count of the tokens in the batches it actually ran
    (``num_input_tokens_seen``: a step holds fewer blocks than the batch size when the data has fewer,
    and a pass's last step holds what is left), all processes' together, with padding (only in the
    final block) taken out at its share of the blocks."""
    return state.num_input_tokens_seen * real_token_fraction


class Progress(TrainerCallback):
    """One line per logged step (loss, learning rate, tokens/s, ETA) and an early time estimate."""

    def __init__(
        self, total_steps: int, say: Callable[[str], None], real_token_fraction: float = 1.0
    ) -> None:
        self.total_steps = total_steps
        self.say = say
        self.real_token_fraction = real_token_fraction
        self.losses: list[float] = []
        self._started: tuple[float, float] | None = None
        """(time, tokens) when this run's training began."""
        self._first_step = 0
        self._estimate_at: tuple[float, float] | None = None
        """(time, tokens) once the first steps, which include warm-up costs, are done."""

    def _tokens(self, state) -> float:
        return real_tokens(state, self.real_token_fraction)

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = (time.monotonic(), self._tokens(state))
        self._first_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step - self._first_step
        if done == _ESTIMATE_AFTER_STEPS:
            self._estimate_at = (time.monotonic(), self._tokens(state))
        elif done == 2 * _ESTIMATE_AFTER_STEPS and self._estimate_at is not None:
            seconds = time.monotonic() - self._estimate_at[0]
            per_step = seconds / _ESTIMATE_AFTER_STEPS
            rate = (self._tokens(state) - self._estimate_at[1]) / max(seconds, 1e-9)
            left = self.total_steps - state.global_step
            self.say(
                f"estimate: {per_step:.2f} s a step, {rate:,.0f} tokens/s; "
                f"{left} steps left, about {_duration(left * per_step)}"
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or self._started is None:
            return
        self.losses.append(float(logs["loss"]))
        # Measured as the estimate is, from the end of the first few steps once they are done: those
        # include the first batches' warm-up, several times a later step on a small model.
        (since, tokens), first = self._started, self._first_step
        if self._estimate_at is not None and state.global_step > self._first_step + _ESTIMATE_AFTER_STEPS:
            (since, tokens), first = self._estimate_at, self._first_step + _ESTIMATE_AFTER_STEPS
        done = max(state.global_step - first, 1)
        elapsed = max(time.monotonic() - since, 1e-9)
        eta = elapsed / done * (self.total_steps - state.global_step)
        self.say(
            f"step {state.global_step}/{self.total_steps}  loss {logs['loss']:.4f}  "
            f"lr {logs.get('learning_rate', 0):.2e}  {(self._tokens(state) - tokens) / elapsed:,.0f} tok/s  "
            f"ETA {_duration(eta)}"
        )

    def stopped_early(self, global_step: int) -> bool:
        return global_step < self.total_steps


class TimeBudget(TrainerCallback):
    """Stops training, with a checkpoint, once ``max_minutes`` of wall-clock time are spent."""

    def __init__(self, max_minutes: float | None) -> None:
        self.limit = None if max_minutes is None else max_minutes * 60
        self._started = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.limit is not None and time.monotonic() - self._started >= self.limit:
            control.should_training_stop = True
            control.should_save = True


class Tracking(TrainerCallback):
    """Sends the Trainer's logs (loss, eval loss, learning rate) and tokens/s to the tracker."""

    def __init__(self, tracker: Tracker, real_token_fraction: float = 1.0) -> None:
        self.tracker = tracker
        self.real_token_fraction = real_token_fraction
        self._last: tuple[float, int, float] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        metrics = {key: float(value) for key, value in logs.items() if isinstance(value, int | float)}
        now, tokens = time.monotonic(), real_tokens(state, self.real_token_fraction)
        if self._last is not None and state.global_step > self._last[1]:
            metrics["tokens_per_second"] = (tokens - self._last[2]) / max(now - self._last[0], 1e-9)
        self._last = (now, state.global_step, tokens)
        self.tracker.log_metrics(metrics, step=state.global_step)


class TrainClock(TrainerCallback, ExportableState):
    """Seconds spent training, over every run that went into the model: the Trainer saves the total in
    each checkpoint's trainer_state.json (its stateful callbacks), and a resumed run starts from it
    (``checkpoints.train_seconds``), so its summary's time covers the steps before the resume too."""

    def __init__(self, seconds_before: float = 0.0) -> None:
        self.seconds_before = seconds_before
        self._started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()

    @property
    def seconds(self) -> float:
        ran = time.monotonic() - self._started if self._started is not None else 0.0
        return self.seconds_before + ran

    def state(self) -> dict[str, Any]:
        return {"args": {"seconds_before": self.seconds}, "attributes": {}}


BASE_EVAL_LOSS = "base_eval_loss"


class RunHistory(TrainerCallback):
    """Puts the base model's held-out loss into the log history at step 0, unless a resume brought it."""

    def __init__(self) -> None:
        self.base_eval_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # on_train_begin comes after the Trainer has loaded a resumed checkpoint's state
        if self.base_eval_loss is None or any(BASE_EVAL_LOSS in entry for entry in state.log_history):
            return
        state.log_history.insert(0, {BASE_EVAL_LOSS: self.base_eval_loss, "step": 0})


def step_losses(log_history: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, training loss) for every logged step, in order; a resumed run's history includes the
    steps before its checkpoint."""
    return [(int(entry["step"]), float(entry["loss"])) for entry in log_history if "loss" in entry]


def mean_loss(losses: Sequence[tuple[int, float]]) -> float | None:
    """The mean training loss per step over the whole run, the Trainer's ``training_loss`` of an
    uninterrupted run (each logged loss is the mean over the steps since the previous log)."""
    total, previous = 0.0, 0
    for step, loss in losses:
        total += loss * (step - previous)
        previous = step
    return total / previous if previous else None
