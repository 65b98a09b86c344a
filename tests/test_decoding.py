"""The line repeat penalty on fixed logits: counts restart after a newline, rows are penalized apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.serving_helpers import make_serving_model

from repotune.decoding import LINE_REPEAT_PENALTY, ban_tokens, newline_tokens, penalize_lines, since_newline

NEWLINES = frozenset({9})


def test_counts_restart_after_a_token_that_holds_a_newline() -> None:
    assert list(since_newline([1, 2, 9, 3, 3], NEWLINES)) == [3, 3]
    assert list(since_newline([1, 2, 2], NEWLINES)) == [1, 2, 2]  # no newline yet: all of it
    assert list(since_newline([1, 9], NEWLINES)) == []  # a fresh line: nothing counts


def test_each_row_loses_its_penalty_for_each_use_on_its_line() -> None:
    logits = torch.zeros((3, 10))
    written = [[1, 9, 3, 3, 4], [3, 3, 9], [5, 5]]
    penalized = penalize_lines(logits, written, NEWLINES, [1.0, 1.0, 0.5])
    assert penalized[0].tolist() == [0, 0, 0, -2, -1, 0, 0, 0, 0, 0]  # 1 was on the line before
    assert penalized[1].tolist() == [0.0] * 10  # just wrote a newline
    assert penalized[2].tolist() == [0, 0, 0, 0, 0, -1, 0, 0, 0, 0]
    assert logits.abs().sum() == 0  # the caller's logits are left as they were
    same = penalize_lines(logits, written, NEWLINES, 2.0)  # one penalty for every row
    assert same[0, 3] == -4 and same[2, 5] == -4


def test_no_penalty_or_nothing_written_returns_the_logits_unchanged() -> None:
    logits = torch.randn((2, 10))
    assert penalize_lines(logits, [[1, 1], [2]], NEWLINES, 0.0) is logits
    assert penalize_lines(logits, [[], [1, 9]], NEWLINES, 1.0) is logits


def test_banned_tokens_can_never_be_chosen_and_no_ban_changes_nothing() -> None:
    logits = torch.tensor([[0.0, 9.0, 1.0, 2.0], [5.0, 0.0, 8.0, 1.0]])
    banned = ban_tokens(logits, frozenset({1, 2}))
    assert banned.argmax(dim=-1).tolist() == [3, 0]  # the best token that is not banned
    assert torch.isneginf(banned[:, [1, 2]]).all() and torch.equal(banned[:, [0, 3]], logits[:, [0, 3]])
    assert logits[0, 1] == 9.0  # a new tensor: the model's logits are left as they were
    assert ban_tokens(logits, frozenset()) is logits


@pytest.mark.integration
def test_newline_tokens_are_the_ones_whose_text_holds_one(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_serving_model(tmp_path / "tiny"))
    found = newline_tokens(tokenizer)
    assert found and all("\n" in tokenizer.decode([i]) for i in found)
    assert tokenizer.encode("x = 1", add_special_tokens=False)[0] not in found
    assert any(i in found for i in tokenizer.encode("a\nb", add_special_tokens=False))


def test_a_completion_stops_at_the_models_and_tokenizers_ends_and_at_end_of_turn(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repotune.data.transforms import FILENAME_TOKEN
    from repotune.decoding import END_OF_TURN_TOKENS, stop_token_ids, suppressed_token_ids
    from repotune.errors import RepotuneError

    folder = make_serving_model(tmp_path / "tiny", header=True)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    header = tokenizer.convert_tokens_to_ids(FILENAME_TOKEN)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    assert stop_token_ids(model, tokenizer) == {tokenizer.eos_token_id, 7, end_of_turn}
    assert end_of_turn != tokenizer.eos_token_id  # the chat template's end of turn is found by name
    assert suppressed_token_ids(tokenizer, stop_token_ids(model, tokenizer)) == [header]
    assert suppressed_token_ids(tokenizer, {header}) == []  # a token that ends a completion is never banned

    model.generation_config.eos_token_id = None
    tokenizer.eos_token = None
    vocab = tokenizer.get_vocab()
    tokenizer.get_vocab = lambda: {t: i for t, i in vocab.items() if t not in END_OF_TURN_TOKENS}
    with pytest.raises(RepotuneError, match="no end-of-sequence token"):
        stop_token_ids(model, tokenizer)


def test_evaluation_scores_with_the_penalty_serving_applies_by_default() -> None:
    from repotune.errors import RepotuneError
    from repotune.evaluate import ScoringConfig
    from repotune.evaluate.stage import settings_from
    from repotune.serving.settings import ServeSettings

    assert ScoringConfig().line_repeat_penalty == ServeSettings().line_repeat_penalty == LINE_REPEAT_PENALTY
    assert settings_from({"line_repeat_penalty": 0}, "--eval")[0].line_repeat_penalty == 0
    for bad in (-1, float("nan"), True):
        with pytest.raises(RepotuneError, match="line_repeat_penalty"):
            ScoringConfig(line_repeat_penalty=bad)


@pytest.mark.parametrize(
    ("generated", "after_newline"),
    [
        ("\n    return x\n", True),
        ("x)\n\n    return x\nmore", True),
        ("only the line before", True),
        ("\n  \n", False),
        ("rest of the line\nnext", False),
        ("", False),
    ],
)
def test_answer_span_is_where_the_answer_line_is(generated: str, after_newline: bool) -> None:
    from repotune.decoding import answer_span
    from repotune.evaluate.generate import answer_line

    span = answer_span(generated, after_newline=after_newline)
    answer = answer_line(generated, after_newline=after_newline)
    assert (generated[span[0] : span[1]] if span else "") == answer


def test_runner_up_is_the_second_best_token_and_an_end_of_sequence_never_wins_a_retry() -> None:
    from repotune.decoding import runner_up

    scores = torch.tensor([[0.0, 3.0, 2.5, 1.0], [5.0, 1.0, 4.0, 4.5]])
    margins, runners = runner_up(scores, scores.argmax(dim=-1))
    assert runners == [2, 3] and margins == pytest.approx([0.5, 0.5])
    margins, runners = runner_up(scores, scores.argmax(dim=-1), refused=frozenset({3}))
    assert margins[0] == pytest.approx(0.5) and margins[1] == float("inf")  # row 1's runner-up is EOS


def _written(folder: Path, written: str, line: str):
    """The tiny serving model's tokenizer, ``written`` as its tokens and their text, where its answer
    line (after the first newline) is, and each token's first and end character."""
    from transformers import AutoTokenizer

    from repotune.decoding import answer_span

    tokenizer = AutoTokenizer.from_pretrained(make_serving_model(folder))
    tokens = tokenizer.encode(written, add_special_tokens=False)
    text = tokenizer.decode(tokens)
    span = answer_span(text, after_newline=True)
    assert text[span[0] : span[1]] == line
    ends = [len(tokenizer.decode(tokens[: i + 1])) for i in range(len(tokens))]
    return tokenizer, tokens, text, span, [0, *ends[:-1]], ends


@pytest.mark.integration
def test_the_token_decoded_again_is_the_least_certain_one_that_writes_the_line(tmp_path: Path) -> None:
    from repotune.decoding import least_certain

    tokenizer, tokens, text, span, starts, ends = _written(
        tmp_path / "tiny", "x)\n    from a import b\n", "    from a import b"
    )
    in_line = [
        i
        for i in range(len(tokens))
        if text[max(starts[i], span[0]) : min(ends[i], span[1])].strip()  # writes a non-blank character
    ]
    assert 0 < len(in_line) < len(tokens)  # "x)", the indentation and the newlines are not in it
    for least in range(len(tokens)):  # whichever token is least certain, only the line's own are taken
        margins = [1.0 + i for i in range(len(tokens))]
        margins[least] = 0.1
        expected = least if least in in_line else in_line[0]
        assert least_certain(tokens, margins, tokenizer, span, 1) == [expected]
        # The next tries: the line's other tokens by margin, smallest first.
        rest = [step for step in in_line if step != expected]
        assert least_certain(tokens, margins, tokenizer, span, 3) == [expected, *rest][:3]
    margins = [1.0] * len(tokens)  # equal margins: the earlier step first
    assert least_certain(tokens, margins, tokenizer, span, len(tokens)) == in_line
    margins[in_line[0]] = float("inf")  # a runner-up that is an end of sequence is never tried
    assert least_certain(tokens, margins, tokenizer, span, len(tokens)) == in_line[1:]
    margins = [float("inf")] * len(tokens)  # every runner-up an end of sequence
    assert least_certain(tokens, margins, tokenizer, span) == []


def test_chosen_logprobs_are_the_log_softmax_of_the_chosen_tokens() -> None:
    from repotune.decoding import chosen_logprobs

    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    got = chosen_logprobs(scores, torch.tensor([1, 0]))
    assert got == pytest.approx([-1.3862944, 2.0 - 2.3407530], abs=1e-5)  # log 1/4; 2 - log(e^2 + 3)


@pytest.mark.integration
def test_a_lines_confidence_is_the_geometric_mean_over_its_own_tokens_and_newline(tmp_path: Path) -> None:
    import math

    from repotune.decoding import decoded_ends, line_confidence

    tokenizer, tokens, _, span, starts, ends = _written(
        tmp_path / "tiny", "x)\n    return b\n\nlater", "    return b"
    )
    # The tokens that write a character of the line or the newline that ends it.
    mine = [i for i in range(len(tokens)) if max(starts[i], span[0]) < min(ends[i], span[1] + 1)]
    assert 0 < len(mine) < len(tokens)  # "x)" before it and "later" after it are not its own
    logprobs = [math.log(0.5) if i in mine else math.log(0.01) for i in range(len(tokens))]
    assert line_confidence(logprobs, decoded_ends(tokens, tokenizer), span) == pytest.approx(0.5)
    logprobs[mine[-1]] = math.log(0.125)  # the newline (or the token holding it) less sure
    expected = math.exp(((len(mine) - 1) * math.log(0.5) + math.log(0.125)) / len(mine))
    assert line_confidence(logprobs, decoded_ends(tokens, tokenizer), span) == pytest.approx(expected)
    assert line_confidence([], [], (0, 3)) == 0.0


# Text that makes decoders join tokens in every way they do: several characters of several bytes (split
# across byte tokens), whitespace runs, punctuation after a space (WordPiece's clean-up), a special
# token inside; long enough for several of ``decoded_ends``' blocks.
_JOINS = (
    "def greet(self, name):\n    return f'hello {name}' , ok .\n\n\t  héllo wörld 你好 🎉🎉 !?\n"
    "<|endoftext|>class Greeter :\n    pass  # done ...\n"
)


def _byte_fallback_tokenizer() -> object:
    """A Llama-style tokenizer: SentencePiece's metaspace, byte tokens for characters it has no token
    for, and a leading space stripped from what it decodes."""
    import json

    from tests.tiny_tokenizer import _trained_json
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(_trained_json())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    for char in " abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(char.replace(" ", "\u2581"), len(vocab))
    spec["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Split("\u2581", "merged_with_next")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


def _wordpiece_tokenizer() -> object:
    """A BERT-style tokenizer: words and ``##`` pieces joined by spaces, the spaces before punctuation
    cleaned up."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[UNK]", "<|endoftext|>"], show_progress=False
    )
    tokenizer.train_from_iterator([_JOINS.replace("<|endoftext|>", "")] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="<|endoftext|>")


class _Counted:
    """A tokenizer that counts its ``decode`` calls."""

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer, self.calls = tokenizer, 0

    def decode(self, tokens: list[int], **options: object) -> str:
        self.calls += 1
        return self.tokenizer.decode(tokens, **options)


@pytest.mark.parametrize("kind", ["byte-level", "byte-fallback", "wordpiece"])
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_decoded_ends_in_blocks_are_each_prefix_decoded_whole(kind: str, skip_special_tokens: bool) -> None:
    from tests.tiny_tokenizer import make_tiny_tokenizer

    from repotune.decoding import decoded_ends, prefix_ends

    make = {"byte-level": make_tiny_tokenizer, "byte-fallback": _byte_fallback_tokenizer}
    tokenizer = make.get(kind, _wordpiece_tokenizer)()
    tokens = tokenizer.encode(_JOINS * 6, add_special_tokens=False)
    assert len(tokens) > 3 * 64  # several blocks, and blocks start inside the characters of several bytes
    assert tokenizer.eos_token_id in tokens
    ends = prefix_ends(tokens, tokenizer, range(len(tokens)), skip_special_tokens=skip_special_tokens)
    counted = _Counted(tokenizer)
    assert decoded_ends(tokens, counted, skip_special_tokens=skip_special_tokens) == ends
    blocks = -(-len(tokens) // 64)
    assert counted.calls <= len(tokens) + 2 * blocks  # no block fell back to decoding prefix by prefix
    assert ends[-1] == len(tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens))
    assert decoded_ends([], tokenizer) == []


class _QuoteDoubling:
    """A decoder whose join reaches back without limit: every token after a quote (token 5) writes two
    characters instead of one."""

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        quoted = 5 in tokens
        after = tokens[tokens.index(5) + 1 :] if quoted else []
        return "x" * (len(tokens) - len(after)) + "yy" * len(after)


def test_decoded_ends_decodes_a_block_prefix_by_prefix_where_its_end_disagrees() -> None:
    from repotune.decoding import DECODE_CONTEXT, decoded_ends, prefix_ends

    tokens = [1] * 10 + [5] + [1] * 300  # the quote far before most blocks' context
    assert 10 + DECODE_CONTEXT < 64
    tokenizer = _QuoteDoubling()
    assert decoded_ends(tokens, tokenizer) == prefix_ends(tokens, tokenizer, range(len(tokens)))
