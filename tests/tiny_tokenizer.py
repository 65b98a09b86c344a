"""A tiny byte-level BPE tokenizer, trained in milliseconds and offline, for tests that need a real one."""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# ChatML, the layout SmolLM2-Instruct's template writes.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB_SIZE = 300

_CORPUS = [
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "class Greeter:\n    def greet(self, name):\n        return f'hello {name}'\n",
    "import os\nfrom pathlib import Path\n\nprint(Path(os.getcwd()))\n",
    "# Project guide\n\nThe tool reads files and writes records. Run the tests first.\n",
    "diff --git a/src/x.py b/src/x.py\n--- a/src/x.py\n+++ b/src/x.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n",
    "Fix the crash on empty input. Thanks for the report, it works now.\n",
]


@lru_cache(maxsize=1)
def _trained_json() -> str:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer.to_str()


def make_tiny_tokenizer(chat_template: bool = False) -> PreTrainedTokenizerFast:
    """A fresh tokenizer (safe to add tokens to) with EOS and pad ``<|endoftext|>``; optionally ChatML.

    Without ``chat_template`` it has no template at all, like a base model's tokenizer.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_json()), eos_token=EOS, pad_token=EOS
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
