"""repotune: fine-tune a language model on one software project's own knowledge and serve it."""

__version__ = "0.1.0"
