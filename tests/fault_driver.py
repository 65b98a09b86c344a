"""`repotune` exactly as its command line runs, plus one pause mid-save where a test kills it.

    REPOTUNE_TEST_PAUSE=STEP:POINT:SIGNAL_FILE python -m tests.fault_driver train DATA -o MODEL ...

When the Trainer saves the checkpoint of step STEP, the process writes SIGNAL_FILE at POINT and then
sleeps, so that the test's ``kill -9`` lands at a known moment of the save instead of a racy one:

- ``weights``: the Trainer has written the model weights of ``checkpoint-STEP``, not yet its optimizer,
  scheduler, RNG and trainer state (the folder a kill during a save leaves: there, but without its files);
- ``marker``: the Trainer has written every file, repotune has not yet marked the checkpoint complete.

The pause lives here, installed by the test process only; no code a user runs contains it. Everything
else (the recipe, the Trainer, the save itself, the kill) is real.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def _pause_at(step: int, signal: Path):
    def pause(global_step: int, where: str) -> None:
        if global_step == step:
            signal.write_text(where)
            time.sleep(3600)  # the test kills the process long before this ends

    return pause


def install(spec: str) -> None:
    step, point, signal = spec.split(":", 2)
    pause = _pause_at(int(step), Path(signal))
    if point == "weights":
        from transformers import Trainer

        save_rest = Trainer._save_optimizer_and_scheduler

        def weights_written(self, output_dir):
            pause(self.state.global_step, output_dir)
            return save_rest(self, output_dir)

        Trainer._save_optimizer_and_scheduler = weights_written
    elif point == "marker":
        from repotune.train import checkpoints

        mark_complete = checkpoints.mark_complete

        def all_written(checkpoint, global_step):
            pause(global_step, str(checkpoint))
            return mark_complete(checkpoint, global_step)

        checkpoints.mark_complete = all_written
    else:
        raise SystemExit(f"unknown pause point {point!r}")


if __name__ == "__main__":
    install(os.environ["REPOTUNE_TEST_PAUSE"])
    from repotune.cli import main

    sys.argv = ["repotune", *sys.argv[1:]]
    main()
