"""The server's prefix cache on a real (tiny, random) Llama: a prompt read after the kept prefix of the
one before gives the logits of the prompt read whole."""

from __future__ import annotations

import pytest
import torch
from tests.serving_helpers import make_serving_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

from repotune.kvcache import PrefixCache, cache_argument, left_padded, plain_cache, shared_prefix, with_room
from repotune.roomy_cache import RoomyLayer


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    folder = make_serving_model(tmp_path_factory.mktemp("kvcache") / "tiny")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _read(model, ids: list[int], cache=None) -> torch.Tensor:
    """The next-token logits after ``ids`` (those not in ``cache`` yet are read into it)."""
    options = {} if cache is None else {cache_argument(model): cache}
    start = 0 if cache is None else cache.get_seq_length()
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids[start:]]), use_cache=True, **options)
    return out.logits[0, -1]


def test_a_kept_prefix_gives_the_logits_of_the_prompt_read_whole(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    assert plain_cache(model)
    body = "".join(f"def f{n}(a, b):\n    return a + b * {n}\n" for n in range(8))
    first, second = (tokenizer(body + tail)["input_ids"] for tail in ("def g(", "def h(x, y"))
    shared = shared_prefix(first, second)
    assert 16 <= shared < min(len(first), len(second))

    kept = PrefixCache(model, min_tokens=16)
    cache, reused = kept.take(first)
    assert reused == 0 and cache.get_seq_length() == 0  # nothing kept yet: a new, empty cache
    _read(model, [*first, 5, 6, 7], cache)  # as generate() leaves it: the prompt and what it wrote
    kept.keep(cache, [*first, 5, 6, 7, 8])  # (the last token written is never read)

    cache, reused = kept.take(second)
    # what the two prompts share, no more: the cache is cut back to it, and the rest is read
    assert reused == shared and cache.get_seq_length() == shared
    assert (kept.hits, kept.reused_tokens, len(kept)) == (1, shared, 0)
    assert torch.allclose(_read(model, second, cache), _read(model, second), atol=1e-5)
    kept.keep(cache, second)

    # the same prompt again: all but its last token, which must be read to predict the next
    cache, reused = kept.take(second)
    assert reused == len(second) - 1
    assert torch.allclose(_read(model, second, cache), _read(model, second), atol=1e-5)
    kept.keep(cache, second)

    other = tokenizer("import os\n" + body)["input_ids"]
    assert shared_prefix(second, other) < 16
    cache, reused = kept.take(other)  # another file: read whole, and the first file's cache stays
    assert reused == 0 and cache.get_seq_length() == 0 and kept.hits == 2 and len(kept) == 1


def test_what_was_written_is_kept_too_and_the_least_recently_used_goes(model_and_tokenizer) -> None:
    """An accepted completion, or a row that resumes after giving way, goes on from what was written:
    the kept sequence holds it. Of ``entries`` caches, the least recently used is dropped first."""
    model, tokenizer = model_and_tokenizer
    body = "def f(a, b):\n    return a + b\n" * 3
    files = [tokenizer(f"# {n}: a file\n" + body)["input_ids"] for n in range(3)]
    kept = PrefixCache(model, min_tokens=8, entries=2)
    for ids in files:
        cache, _ = kept.take(ids)
        _read(model, [*ids, 40, 41], cache)
        kept.keep(cache, [*ids, 40, 41, 42])
    assert len(kept) == 2
    assert kept.take([*files[0], 40])[1] == 0  # the oldest was dropped
    cache, reused = kept.take([*files[2], 40, 41, 43, 44])  # the answer accepted, and typed on
    assert reused == len(files[2]) + 2
    assert torch.allclose(
        _read(model, [*files[2], 40, 41, 43, 44], cache), _read(model, [*files[2], 40, 41, 43, 44]), atol=1e-5
    )


def test_a_cache_that_is_not_the_sequences_is_not_kept(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    ids = tokenizer("def f(a, b):\n    return a + b\n" * 4)["input_ids"]
    kept = PrefixCache(model, min_tokens=4)
    cache, _ = kept.take(ids)
    _read(model, ids, cache)
    kept.keep(cache, ids[:8])  # holds more than the sequence it is said to be of
    short, _ = kept.take(ids)
    _read(model, ids[:3], short)
    kept.keep(short, ids[:3])  # fewer tokens than a prompt must share to reuse any
    assert len(kept) == 0 and kept.take(ids)[1] == 0
    with pytest.raises(ValueError, match="min_tokens"):
        PrefixCache(model, min_tokens=0)


def test_a_borrowed_prefix_is_a_copy_and_the_entry_stays_kept(model_and_tokenizer) -> None:
    """The evaluate stage reads many prompts that start alike (a retrieval arm's chunks in front of the
    lines of one file): ``borrow`` hands out a copy of the shared tokens and keeps the entry."""
    model, tokenizer = model_and_tokenizer
    body = "".join(f"def f{n}(a, b):\n    return a + b * {n}\n" for n in range(6))
    first, second, third = (tokenizer(body + tail)["input_ids"] for tail in ("def g(", "def h(x", "class K:"))
    kept = PrefixCache(model, min_tokens=16)
    assert kept.borrow(first) == (None, 0)  # nothing kept: the caller reads the prompt whole
    cache = DynamicCache(config=model.config)
    _read(model, first, cache)
    kept.keep(cache, first)
    keys = [layer.keys.clone() for layer in cache.layers]

    for ids in (second, third):  # both start from the first prompt's cache, which stays as it was
        borrowed, reused = kept.borrow(ids)
        assert reused == shared_prefix(first, ids) >= 16 and borrowed.get_seq_length() == reused
        assert torch.allclose(_read(model, ids, borrowed), _read(model, ids), atol=1e-5)
        assert len(kept) == 1 and all(torch.equal(a, b.keys) for a, b in zip(keys, cache.layers, strict=True))
    assert (kept.hits, kept.reused_tokens) == (2, shared_prefix(first, second) + shared_prefix(first, third))


def test_a_batch_with_room_decodes_as_a_plain_one_writing_in_place(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    texts = ("def add(a, b):\n    return a", "import os\nimport sys\n\nprint(os.sep", "x = 1")
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    option = cache_argument(model)

    def read_alone() -> list[DynamicCache]:
        caches = []
        for ids in prompts:
            cache = DynamicCache(config=model.config)
            with torch.inference_mode():
                model(input_ids=torch.tensor([ids]), use_cache=True, **{option: cache})
            caches.append(cache)
        return caches

    masks = [torch.ones((1, len(ids)), dtype=torch.long) for ids in prompts]
    plain, mask = left_padded(read_alone(), masks)
    roomy, same = left_padded(read_alone(), masks, room=3)
    assert torch.equal(mask, same) and mask.shape == (3, max(map(len, prompts)))
    assert all(type(layer) is RoomyLayer for layer in roomy.layers)
    assert roomy.get_seq_length() == plain.get_seq_length() == mask.shape[1]
    where = roomy.layers[0].keys.data_ptr()
    positions = (mask.sum(-1, keepdim=True) - 1).clamp(min=0)
    following = torch.tensor([[5], [6], [7]])

    def step() -> None:
        nonlocal mask, positions, following
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        positions = positions + 1
        with torch.inference_mode():
            outs = [model(input_ids=following, attention_mask=mask, position_ids=positions, use_cache=True,
                          **{option: cache}).logits[:, -1] for cache in (plain, roomy)]  # fmt: skip
        assert torch.equal(outs[0], outs[1])  # the same keys and values, attended the same way
        for a, b in zip(plain.layers, roomy.layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        following = outs[0].argmax(-1, keepdim=True)

    for _ in range(3):  # within the room: each token written where the prompts are
        step()
        assert roomy.layers[0].keys.data_ptr() == where
    step()  # out of room: it grows, and decodes on the same
    assert roomy.layers[0].keys.data_ptr() != where
    keep = torch.tensor([0, 2])  # a row has finished and leaves the batch
    for cache in (plain, roomy):
        cache.batch_select_indices(keep)
    mask, positions, following = mask[keep], positions[keep], following[keep]
    step()
    for cache in (plain, roomy):
        cache.crop(-2)
    assert roomy.get_seq_length() == plain.get_seq_length() == mask.shape[1] - 2
    mask = mask[:, :-2]
    positions = positions - 2
    step()


def test_generate_writes_in_the_room_given_and_answers_as_with_its_own_cache(model_and_tokenizer) -> None:
    """The server hands ``generate`` a cache with room (``with_room``): an empty one, or a kept prefix
    that the rest of the prompt is read onto. Every token is written in place, and the answer is the
    one ``generate`` gives with a cache of its own."""
    model, tokenizer = model_and_tokenizer
    ids = tokenizer("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return")["input_ids"]
    option, new = cache_argument(model), 6

    def generated(cache=None) -> list[int]:
        options = {} if cache is None else {option: cache}
        with torch.inference_mode():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
                **options,
            )
        return out[0, len(ids) :].tolist()

    own = generated()
    empty = with_room(DynamicCache(config=model.config), len(ids) + new)
    assert all(type(layer) is RoomyLayer and layer.room == len(ids) + new for layer in empty.layers)
    assert generated(empty) == own
    assert empty.layers[0].capacity == len(ids) + new  # made at the first update: no growth after it
    assert empty.get_seq_length() == len(ids) + new - 1  # the last token written is never read

    kept = DynamicCache(config=model.config)
    _read(model, ids[:10], kept)  # a kept prefix: plain layers, as a PrefixCache may hand out
    where = kept.layers[0].keys
    roomy = with_room(kept, len(ids) - 10 + new)
    assert roomy is kept and roomy.get_seq_length() == 10 and torch.equal(roomy.layers[0].keys, where)
    start = roomy.layers[0].keys.data_ptr()
    assert generated(roomy) == own
    assert roomy.layers[0].keys.data_ptr() == start and roomy.layers[0].capacity == len(ids) + new
    roomy.crop(-(len(ids) + new - 1 - 12))  # kept again and cut back for a prompt sharing 12 tokens
    assert roomy.layers[0].room == len(ids) + new - 12
    assert with_room(roomy, 3).layers[0].capacity == len(ids) + new  # room enough: nothing copied
    assert with_room(roomy, len(ids) + new).layers[0].capacity == 12 + len(ids) + new

    sliding = DynamicCache()
    sliding.layers.append(DynamicSlidingWindowLayer(sliding_window=4))
    with pytest.raises(ValueError, match="not plain keys and values"):
        with_room(sliding, 4)
