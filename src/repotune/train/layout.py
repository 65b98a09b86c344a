"""The files of a model folder, named once: what the train stage writes and evaluation and serving read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainLayout:
    """A trained model's folder: it loads with ``AutoModelForCausalLM.from_pretrained`` as it is."""

    folder: Path

    @property
    def config(self) -> Path:
        """The merged model's config (beside its safetensors weights and tokenizer files)."""
        return self.folder / "config.json"

    @property
    def adapter(self) -> Path:
        """The LoRA adapter in PEFT format; absent after full fine-tuning."""
        return self.folder / "adapter"

    @property
    def summary(self) -> Path:
        """Recipe, data, losses of the base and the tuned model, speed (``train_summary.json``)."""
        return self.folder / "train_summary.json"

    @property
    def model_card(self) -> Path:
        """A short model card for people."""
        return self.folder / "README.md"

    @property
    def checkpoints(self) -> Path:
        """Trainer checkpoints: a restarted run resumes from the newest."""
        return self.folder / "checkpoints"

    @property
    def token_cache(self) -> Path:
        """Tokenized records, reused by a restarted run on the same disk."""
        return self.folder / ".token-cache"

    @property
    def scratch(self) -> tuple[Path, ...]:
        """What a copy of the model leaves behind: checkpoints and caches are for this disk only."""
        return (self.checkpoints, self.token_cache)
