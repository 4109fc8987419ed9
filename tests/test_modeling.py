"""Tests for shared.modeling: real weights, real torch, no network.

Model-loading tests are marked slow and share one materialised checkpoint per module (loading is
the expensive part). Each assertion is something that has broken, or could break, a stage that
builds on this layer: wrong parameter counts, non-deterministic artifacts, int8 files that reload
differently, adapters that serve differently from how they were trained.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from shared.modeling import (
    DatasetError,
    Encoder,
    Example,
    Int8Embedding,
    Int8Linear,
    LoraSettings,
    LoraWrapped,
    Pair,
    TrainReport,
    UnknownModelError,
    attach_adapter,
    classify,
    dataset_digest,
    evaluate_classification,
    evaluate_similarity,
    known_candidates,
    load_encoder,
    load_jsonl,
    materialize_candidate,
    pick_device,
    quantization_error,
    quantize_int8,
    save_quantized,
    size_class,
    train_lora,
)
from shared.modeling.quantization import dequantize_int8

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "support-tickets"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
DEMO_THRESHOLD = 0.80  # quality.threshold in examples/support-tickets/requirements.yaml
DEMO_TUNABLE_GAP = 0.10  # quality.tunable_gap there


def _load_make_data() -> ModuleType:
    spec = importlib.util.spec_from_file_location("support_tickets_make_data", EXAMPLE_DIR / "make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_data = _load_make_data()
LABELS: dict[str, str] = make_data.LABELS


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_pickles(directory: Path) -> None:
    pickled = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
    assert not pickled, f"pickle-format files written: {pickled}"


# --------------------------------------------------------------------------- device / catalog


def test_pick_device_resolves_auto_and_explicit_names() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    assert pick_device(" CPU ") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"unknown device 'tpu'.*'auto', 'cpu', 'cuda'"):
        pick_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_pick_device_refuses_cuda_without_one() -> None:
    with pytest.raises(RuntimeError, match="no CUDA device"):
        pick_device("cuda")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (0, "xs"),
        (19_999_999, "xs"),
        (20_000_000, "s"),
        (59_999_999, "s"),
        (60_000_000, "m"),
        (399_999_999, "m"),
        (400_000_000, "l"),
        (2_999_999_999, "l"),
        (3_000_000_000, "xl"),
    ],
)
def test_size_class_boundaries(params: int, expected: str) -> None:
    assert size_class(params) == expected


def test_catalog_lists_two_real_size_classes() -> None:
    specs = known_candidates()
    assert set(specs) == {"minilm-l6", "minilm-l3"}
    assert specs["minilm-l6"].params == 22_713_216  # all-MiniLM-L6-v2, counted from its safetensors header
    assert specs["minilm-l3"].params < specs["minilm-l6"].params
    assert (specs["minilm-l3"].size_class, specs["minilm-l6"].size_class) == ("xs", "s")
    specs.clear()  # callers get a copy; the catalog itself must not change
    assert len(known_candidates()) == 2


def test_unknown_candidate_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=r"'gpt-9'.*minilm-l3, minilm-l6"):
        materialize_candidate("gpt-9", tmp_path)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- datasets


def test_load_jsonl_reads_typed_rows(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(
        '{"id": "1", "text": "hi", "label": "a", "extra": 1}\n\n{"id": "2", "text": "yo", "label": "b"}\n'
    )
    rows = load_jsonl(path, Example)
    assert [r.id for r in rows] == ["1", "2"]
    assert dataset_digest(rows) == dataset_digest(load_jsonl(path, Example))
    assert dataset_digest(rows) != dataset_digest(rows[:1])


def test_load_jsonl_reports_every_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [
        '{"id": "1", "a": "x", "b": "y", "score": 0.5}',  # fine
        '{"id": "2", "a": "x", "b": "y", "score": 0.5',  # bad JSON
        '{"id": "3", "a": "x", "score": 0.5}',  # missing b
        '{"id": "4", "a": 7, "b": "y", "score": 0.5}',  # wrong type, not coerced
        '{"id": "5", "a": "x", "b": "y", "score": 1.5}',  # out of range
        '{"id": "1", "a": "x", "b": "y", "score": 1}',  # duplicate id
        '["not", "an", "object"]',
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as info:
        load_jsonl(path, Pair)
    problems = info.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7)]
    assert "invalid JSON" in problems[0]
    assert "b: Field required" in problems[1]
    assert "a: Input should be a valid string" in problems[2]
    assert "score" in problems[3]
    assert "duplicate id '1' (first on line 1)" in problems[4]
    assert "expected a JSON object" in problems[5]
    assert isinstance(info.value, ValueError)


def test_load_jsonl_rejects_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DatasetError, match="no rows"):
        load_jsonl(path, Example)


# --------------------------------------------------------------------------- demo data


def test_demo_data_is_current_deterministic_and_well_formed(tmp_path: Path) -> None:
    counts = make_data.main(tmp_path)
    assert counts == {"eval": 640, "train": 300, "canary": 120, "general": 200}
    total = 0
    for name in ("eval", "train", "canary", "general"):
        fresh, shipped = tmp_path / f"{name}.jsonl", EXAMPLE_DIR / f"{name}.jsonl"
        assert fresh.read_bytes() == shipped.read_bytes(), f"{name}.jsonl is stale: rerun make_data.py"
        total += shipped.stat().st_size
    assert total < 1_000_000

    splits = {
        name: load_jsonl(EXAMPLE_DIR / f"{name}.jsonl", Example) for name in ("eval", "train", "canary")
    }
    texts = {name: {row.text.lower() for row in rows} for name, rows in splits.items()}
    assert not texts["eval"] & texts["train"]
    assert not texts["eval"] & texts["canary"]
    assert not texts["train"] & texts["canary"]
    for rows in splits.values():
        assert {row.label for row in rows} == set(LABELS)

    pairs = load_jsonl(EXAMPLE_DIR / "general.jsonl", Pair)
    assert {p.score for p in pairs} == set(make_data.GENERAL_SCORES.values())
    support_words = {"order", "invoice", "refund", "login", "password", "parcel"}
    assert not any(word in (p.a + " " + p.b).lower().split() for p in pairs for word in support_words)


# --------------------------------------------------------------------------- quantization (no weights)


def test_int8_linear_is_per_channel_symmetric_and_close() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight[3].zero_()  # an all-zero channel must not divide by zero
    q = Int8Linear.from_float(linear)
    assert q.weight_int8.dtype == torch.int8 and q.weight_scale.dtype == torch.float32
    expected_scale = linear.weight.detach().abs().amax(dim=1) / 127
    assert torch.allclose(q.weight_scale[torch.arange(32) != 3], expected_scale[torch.arange(32) != 3])
    assert int(q.weight_int8.abs().max()) == 127
    assert torch.count_nonzero(q.weight_int8[3]) == 0
    x = torch.randn(5, 64)
    assert (q(x) - linear(x)).abs().max() < 0.02
    assert q(x.double()).dtype == torch.float64  # computes in the caller's dtype
    assert torch.allclose(q.to_float()(x), q(x), atol=1e-6)


def test_int8_embedding_dequantizes_only_looked_up_rows() -> None:
    torch.manual_seed(0)
    embedding = nn.Embedding(100, 16, padding_idx=0)
    q = Int8Embedding.from_float(embedding)
    ids = torch.tensor([[1, 5, 99], [0, 2, 2]])
    assert q(ids).shape == (2, 3, 16)
    assert torch.allclose(q(ids), q.dequantized_weight()[ids])
    assert (q(ids) - embedding(ids)).abs().max() < 0.02


def test_quantize_int8_replaces_every_linear_and_embedding() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2)))
    quantize_int8(model)
    kinds = [type(m) for m in model.modules()]
    assert nn.Linear not in kinds and nn.Embedding not in kinds
    assert kinds.count(Int8Linear) == 2 and kinds.count(Int8Embedding) == 1
    dequantize_int8(model)
    assert Int8Linear not in [type(m) for m in model.modules()]


def test_load_encoder_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing model\.safetensors"):
        load_encoder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing tokenizer\.json"):
        load_encoder(tmp_path)


def test_attach_adapter_needs_both_adapter_files(tmp_path: Path) -> None:
    encoder = Encoder(model=nn.Linear(2, 2), tokenizer=None, device=torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        attach_adapter(encoder, tmp_path)


# --------------------------------------------------------------------------- real model (slow)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("candidates")
    return {name: materialize_candidate(name, root / name) for name in ("minilm-l6", "minilm-l3")}


@pytest.fixture(scope="module")
def l6(model_dirs: dict[str, Path]) -> Encoder:
    return load_encoder(model_dirs["minilm-l6"], pick_device())


@pytest.fixture(scope="module")
def int8_dir(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    encoder = load_encoder(model_dirs["minilm-l6"], pick_device())
    quantize_int8(encoder.model)
    yield save_quantized(encoder, tmp_path_factory.mktemp("int8") / "minilm-l6-int8")


@pytest.fixture(scope="module")
def int8(int8_dir: Path) -> Encoder:
    return load_encoder(int8_dir, pick_device())


@pytest.fixture(scope="module")
def eval_rows() -> list[Example]:
    return load_jsonl(EXAMPLE_DIR / "eval.jsonl", Example)


@pytest.mark.slow
def test_materialize_is_byte_identical_and_truncates(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    again = materialize_candidate("minilm-l3", tmp_path / "again")
    assert _sha256(again / "model.safetensors") == _sha256(model_dirs["minilm-l3"] / "model.safetensors")
    for name, layers in (("minilm-l6", 6), ("minilm-l3", 3)):
        directory = model_dirs[name]
        for filename in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
            assert (directory / filename).is_file()
        assert json.loads((directory / "config.json").read_text())["num_hidden_layers"] == layers
        _no_pickles(directory)


@pytest.mark.slow
def test_catalog_params_match_the_loaded_models(model_dirs: dict[str, Path], l6: Encoder) -> None:
    specs = known_candidates()
    l3 = load_encoder(model_dirs["minilm-l3"], torch.device("cpu"))
    assert l6.param_count() == specs["minilm-l6"].params
    assert l3.param_count() == specs["minilm-l3"].params
    assert l3.config.num_hidden_layers == 3
    last_kept = "encoder.layer.2.output.dense.weight"  # the FIRST three layers are the ones kept
    assert torch.equal(l3.model.get_parameter(last_kept), l6.model.get_parameter(last_kept).cpu())
    with pytest.raises(AttributeError):
        l3.model.get_parameter("encoder.layer.3.output.dense.weight")


@pytest.mark.slow
def test_embed_is_normalised_batched_and_meaningful(l6: Encoder) -> None:
    texts = ["I was charged twice, please refund me", "The app crashes on start", "Where is my parcel?"]
    one_by_one = torch.cat([l6.embed([t]) for t in texts])
    batched = l6.embed(texts, batch_size=2)
    assert batched.shape == (3, 384) and batched.dtype == torch.float32 and batched.device.type == "cpu"
    assert torch.allclose(batched.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(one_by_one, batched, atol=1e-5)
    assert not batched.requires_grad
    assert l6.embed([]).shape == (0, 384)
    assert classify(l6, texts, LABELS) == ["billing", "technical", "shipping"]


@pytest.mark.slow
def test_evaluate_classification_measures_quality_and_speed(l6: Encoder, eval_rows: list[Example]) -> None:
    result = evaluate_classification(l6, eval_rows[:96], LABELS, latency_samples=8)
    assert result.n == 96
    assert 0.6 < result.accuracy < 0.97  # the demo set is calibrated to be hard but not hopeless
    assert set(result.per_label_accuracy) == set(LABELS)
    assert 0 < result.latency_ms_p50 <= result.latency_ms_p95
    assert result.throughput_per_s > 0 and result.seconds > 0
    stray = [*eval_rows[:3], Example(id="x", text="hello", label="sales")]
    with pytest.raises(ValueError, match="sales"):
        evaluate_classification(l6, stray, LABELS)


@pytest.mark.slow
def test_evaluate_similarity_tracks_general_ability(l6: Encoder) -> None:
    pairs = load_jsonl(EXAMPLE_DIR / "general.jsonl", Pair)
    result = evaluate_similarity(l6, pairs)
    assert result.n == 200
    assert result.spearman > 0.7


@pytest.mark.slow
def test_int8_reloads_identically_at_a_quarter_of_the_bytes(
    model_dirs: dict[str, Path], l6: Encoder, int8_dir: Path, int8: Encoder, tmp_path: Path
) -> None:
    manifest = json.loads((int8_dir / "quantization.json").read_text())
    assert manifest["scheme"] == "int8-weight-only" and manifest["format_version"] == 1
    assert "embeddings.word_embeddings" in manifest["modules"]
    assert "encoder.layer.5.output.dense" in manifest["modules"]
    _no_pickles(int8_dir)

    in_memory = load_encoder(model_dirs["minilm-l6"], l6.device)
    quantize_int8(in_memory.model)
    resaved = save_quantized(in_memory, tmp_path / "again")
    assert _sha256(resaved / "model.safetensors") == _sha256(int8_dir / "model.safetensors")
    texts = ["my refund has not arrived", "the login page is blank", "reset my password please"]
    assert (int8.embed(texts) - in_memory.embed(texts)).abs().max() < 1e-5
    assert int8.param_count() == l6.param_count()
    assert 3.5 <= l6.weight_bytes() / int8.weight_bytes() <= 4.0
    assert 0 < quantization_error(l6, int8, texts) < 0.01

    unpacked = load_encoder(int8_dir, l6.device, dequantize=True)
    assert not any(isinstance(m, Int8Linear | Int8Embedding) for m in unpacked.model.modules())
    assert (unpacked.embed(texts) - int8.embed(texts)).abs().max() < 1e-5


@pytest.fixture(scope="module")
def adapter(int8_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainReport]:
    train = load_jsonl(EXAMPLE_DIR / "train.jsonl", Example)
    out = tmp_path_factory.mktemp("adapter") / "lora"
    report = train_lora(int8_dir, train, LABELS, out, LoraSettings(epochs=1), device=pick_device())
    return out, report


@pytest.mark.slow
def test_train_lora_trains_only_the_adapter_and_saves_safetensors(adapter: tuple[Path, TrainReport]) -> None:
    out, report = adapter
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".md") == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    _no_pickles(out)
    assert report.steps == 19 and report.epochs == 1  # ceil(300 / 16)
    assert report.trainable_params == 6 * 2 * (8 * 384 + 384 * 8)  # r=8 on query and value in 6 layers
    assert report.total_params == known_candidates()["minilm-l6"].params + report.trainable_params
    assert report.loss_last < report.loss_first


@pytest.mark.slow
def test_attach_adapter_serves_what_peft_trained(
    int8_dir: Path, int8: Encoder, adapter: tuple[Path, TrainReport], eval_rows: list[Example]
) -> None:
    from peft import PeftModel

    out, _ = adapter
    base = load_encoder(int8_dir, int8.device, dequantize=True)
    peft_encoder = Encoder(
        PeftModel.from_pretrained(base.model, str(out)).eval(), base.tokenizer, base.device
    )
    fp32_base = load_encoder(int8_dir, int8.device, dequantize=True)
    ours = attach_adapter(fp32_base, out)
    texts = [row.text for row in eval_rows[:16]]
    assert (ours.embed(texts) - peft_encoder.embed(texts)).abs().max() < 1e-4
    assert sum(isinstance(m, LoraWrapped) for m in ours.model.modules()) == 12
    assert not any(isinstance(m, LoraWrapped) for m in fp32_base.model.modules())  # input left untouched

    tuned = attach_adapter(int8, out)
    assert (tuned.embed(texts) - ours.embed(texts)).abs().max() < 1e-5  # int8 base serves what was trained


@pytest.mark.slow
def test_demo_is_calibrated_around_its_threshold(
    model_dirs: dict[str, Path],
    l6: Encoder,
    int8: Encoder,
    adapter: tuple[Path, TrainReport],
    eval_rows: list[Example],
) -> None:
    """The support-tickets story: l3 too far below the threshold to tune, l6 (fp32 and int8) a small
    gap below it, and even a one-epoch adapter clears it without costing general ability."""
    l3 = load_encoder(model_dirs["minilm-l3"], l6.device)
    tuned = attach_adapter(int8, adapter[0])
    accuracy = {
        name: evaluate_classification(encoder, eval_rows, LABELS, latency_samples=2).accuracy
        for name, encoder in (("l3", l3), ("l6", l6), ("int8", int8), ("tuned", tuned))
    }
    assert accuracy["l3"] < DEMO_THRESHOLD - DEMO_TUNABLE_GAP, accuracy  # too far below: size up
    assert DEMO_THRESHOLD - 0.05 < accuracy["l6"] < DEMO_THRESHOLD, accuracy  # a small, tunable gap
    assert abs(accuracy["int8"] - accuracy["l6"]) <= 0.01, accuracy
    assert accuracy["tuned"] >= DEMO_THRESHOLD, accuracy
    pairs = load_jsonl(EXAMPLE_DIR / "general.jsonl", Pair)
    drop = evaluate_similarity(int8, pairs).spearman - evaluate_similarity(tuned, pairs).spearman
    assert drop < 0.02


@pytest.mark.slow
def test_train_lora_is_deterministic(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    rows = load_jsonl(EXAMPLE_DIR / "train.jsonl", Example)[:24]
    settings = LoraSettings(epochs=1, batch_size=12, seed=7)
    device = pick_device()
    first = train_lora(model_dirs["minilm-l3"], rows, LABELS, tmp_path / "a", settings, device)
    second = train_lora(model_dirs["minilm-l3"], rows, LABELS, tmp_path / "b", settings, device)
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 3 * 2 * 2
    tolerance = 0.0 if device.type == "cpu" else 1e-5
    assert all((a[k] - b[k]).abs().max() <= tolerance for k in a)
    assert first.loss_first == pytest.approx(second.loss_first, abs=tolerance)
    assert any(bool(a[k].abs().max() > 0) for k in a if "lora_B" in k)  # B starts at zero; it moved


@pytest.mark.slow
def test_repository_code_in_a_checkpoint_is_never_run(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint that asks for its own Python (auto_map) loads as the stock architecture or not at all;
    the shipped module is never imported."""
    hostile = tmp_path / "hostile"
    shutil.copytree(model_dirs["minilm-l3"], hostile)
    sentinel = tmp_path / "pwned"
    (hostile / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n"
                                              "from transformers import BertModel as EvilModel\n")
    (hostile / "configuration_evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n"
                                                   "from transformers import BertConfig as EvilConfig\n")
    config = json.loads((hostile / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (hostile / "config.json").write_text(json.dumps(config))
    try:
        encoder = load_encoder(hostile, pick_device())
        assert type(encoder.model).__module__.startswith("transformers.")
    except ValueError as exc:  # transformers may refuse outright: just as good
        assert "trust_remote_code" in str(exc)
    assert not sentinel.exists()
