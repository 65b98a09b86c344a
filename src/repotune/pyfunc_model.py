"""The MLflow ``pyfunc`` face of a repotune model: text completions from its merged model folder.

``tracking.MlflowTracker.log_model`` logs this file as an MLflow "model from code": MLflow copies the
file into the logged model and runs it when the model is loaded. The model folder (config.json,
safetensors, tokenizer, and the LoRA adapter in ``adapter/``) travels as the pyfunc artifact ``model``;
KServe's Hugging Face runtime deploys that same folder. repotune's own code travels too (the model's
``code_paths``), so that this face decodes as the evaluate stage scored and ``repotune serve`` serves:
prompts tokenized as training text was (a prompt's trailing whitespace held back for the model to
write, ``repotune.serving.healing``), the file header's token never written, generation stopped where
the server stops it, and the line repeat penalty the model was scored with. Where the arm that
evaluation chose retrieves and the model folder carries the index (``MODEL/retrieval/``, as the
pipeline ships it), each prompt gets the context the server would put in front of it (a request
without ``file_path``: the chunks found for the code before the cursor, then the prompt, as
``code_prompt`` frames it), within the budget the model was trained with and the room the window has
left after ``max_tokens``. Both are the logged ``model_config``:
``mlflow.pyfunc.load_model(uri, model_config={"line_repeat_penalty": 0, "retrieval": False})`` turns
them off. Loading needs mlflow, torch, transformers and rapidfuzz (and bm25s with an index), not an
installed repotune. What the server has that it lacks: a request cannot name its file (the signature
takes prompts alone), and prompts are decoded one at a time. Once registered::

    model = mlflow.pyfunc.load_model("models:/repotune@champion")
    model.predict(["def add(a, b):"], params={"max_tokens": 32})  # -> ["\\n    return a + b", ...]

and ``mlflow models serve -m models:/repotune@champion`` answers ``POST /invocations`` with
``{"inputs": ["def add(a, b):"], "params": {"max_tokens": 32}}``.

Importing this module registers the model with ``mlflow.models.set_model``, as MLflow requires of a
model-from-code file; nothing else in repotune imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

ARTIFACT = "model"
"""The pyfunc artifact that holds the Hugging Face model folder."""
MAX_TOKENS = 64
"""New tokens per completion when ``max_tokens`` is not given (the logged signature's default is the same,
``repotune.tracking.MAX_NEW_TOKENS``; this file imports repotune only when the model loads)."""


class CompletionModel(PythonModel):
    """Greedy (or sampled, with ``temperature`` > 0) completion of each prompt, one prompt at a time."""

    # predict() has no type hints (below), so MLflow has nothing to validate and would only warn, once
    # per model logged, that there are none: a UserWarning in every evaluate step's log that a user
    # cannot act on, and one that no warnings filter reaches (MLflow resets the filters around it).
    # The attribute is the one MLflow's own ChatModel sets to skip that check.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from repotune.decoding import check_line_penalty, newline_tokens, stop_token_ids, suppressed_token_ids
        from repotune.serving.healing import TokenTexts
        from repotune.serving.loading import context_length
        from repotune.serving.retrieval import ServedRetrieval

        folder = context.artifacts[ARTIFACT]
        config = context.model_config or {}
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto").to(self.device).eval()
        self.window = context_length(self.model, self.tokenizer)
        self.token_texts = TokenTexts(self.tokenizer)
        # the index the folder carries, searched when the evaluated arm did (unset: as the model was
        # trained); not even loaded when switched off, as nothing can switch it on per request
        setting = config.get("retrieval")
        self.retrieval = None if setting is False else ServedRetrieval.load(Path(folder), setting)
        self.line_penalty = config.get("line_repeat_penalty", 0.0)
        check_line_penalty(self.line_penalty)
        self.newlines = newline_tokens(self.tokenizer) if self.line_penalty else frozenset()
        # where the server stops (the model's and tokenizer's EOS, chat end-of-turn tokens), never banned
        self.eos = sorted(stop_token_ids(self.model, self.tokenizer))
        self.banned = suppressed_token_ids(self.tokenizer, self.eos)

    # No type hints here: MLflow reads them as the model's input schema, and the logged signature
    # (prompts in, completions out, max_tokens and temperature) is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import torch
        from transformers import LogitsProcessorList

        from repotune.data.transforms import code_prompt
        from repotune.decoding import LinePenaltyProcessor
        from repotune.serving.healing import HealingProcessor, agreed, encode_held_back

        params = params or {}
        max_tokens = int(params.get("max_tokens") or MAX_TOKENS)
        temperature = float(params.get("temperature") or 0.0)
        # The signature's one unnamed string column arrives as the first column of a DataFrame.
        prompts = list(model_input.iloc[:, 0]) if hasattr(model_input, "iloc") else list(model_input)
        pad = self.tokenizer.pad_token_id
        options: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_k": 0}
            if temperature > 0
            else {"do_sample": False}
        )
        if self.banned:
            options["suppress_tokens"] = self.banned
        completions = []
        for prompt in prompts:
            # as the server encodes a prompt: an empty one starts a document, trailing whitespace is held
            # back for the model to write (repotune.serving.healing)
            text = str(prompt)
            ids, heal = encode_held_back(text, self.tokenizer, self.token_texts)
            if not ids:
                raise ValueError("an empty prompt needs a tokenizer with an EOS or BOS token to start from")
            if self.retrieval is not None and self.retrieval.default:
                # framed as `repotune serve` frames a request without `file_path`, within the same room
                ids, heal, _ = self.retrieval.framed(
                    text,
                    None,
                    None,
                    self.tokenizer,
                    (ids, heal),
                    wanted=max_tokens,
                    window=self.window,
                    frame=lambda context, text=text: encode_held_back(
                        code_prompt(text, tokenizer=self.tokenizer, context=context),
                        self.tokenizer,
                        self.token_texts,
                    ),
                )
            encoded = torch.tensor([ids], device=self.device)
            processors: list[Any] = [HealingProcessor([heal], len(ids), self.token_texts)] if heal else []
            if self.line_penalty:
                processors.append(LinePenaltyProcessor([self.line_penalty], [len(ids)], self.newlines))
            with torch.inference_mode():
                output = self.model.generate(
                    encoded,
                    attention_mask=torch.ones_like(encoded),
                    max_new_tokens=max_tokens,
                    eos_token_id=self.eos,
                    pad_token_id=pad if pad is not None else self.eos[0],
                    logits_processor=LogitsProcessorList(processors),
                    **options,
                )
            written = self.tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)
            completions.append(written[agreed(written, heal) :])  # the held-back whitespace was the prompt's
        return completions


mlflow.models.set_model(CompletionModel())
