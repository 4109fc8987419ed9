"""Tests for shared.modeling: real weights, real torch, no network.

Model-loading tests are marked slow and share one materialised checkpoint per module (loading is
the expensive part). Each assertion is something that has broken, or could break, a stage that
builds on this layer: wrong parameter counts, non-deterministic artifacts, int8 files that reload
differently, adapters that serve differently from how they were trained.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from weightflow.contracts.requirements import CandidateRef, HardwareProfile, TaskSpec
from weightflow.shared.modeling.checkpoint import CheckpointError, inspect_checkpoint
from weightflow.shared.modeling.datasets import DatasetError, Example, Pair, dataset_digest, load_jsonl
from weightflow.shared.modeling.device import pick_device
from weightflow.shared.modeling.loading import weight_bytes
from weightflow.shared.modeling.protocols import LoadedModel, TrainResult
from weightflow.shared.modeling.quantizers.int8_modules import (
    Int8Embedding,
    Int8Linear,
    dequantize_int8,
    load_int8,
    quantize_int8,
    quantized_numel,
    save_quantized,
)
from weightflow.shared.modeling.registry import sources, tasks, tuners
from weightflow.shared.modeling.sizes import size_class
from weightflow.shared.modeling.sources.builtin import UnknownModelError, materialize_candidate
from weightflow.shared.modeling.tuners.lora import LoraSettings
from weightflow.shared.modeling.tuners.lora_training import LoraWrapped, attach, loss_curve, train_lora

from ..conftest import example_script

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "support-tickets"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
DEMO_THRESHOLD = 0.80  # quality.threshold in examples/support-tickets/requirements.yaml
DEMO_TUNABLE_GAP = 0.10  # quality.tunable_gap there
HARDWARE = HardwareProfile(profile="test", memory_mb=1000, cost_per_hour_usd=0.1)
ZERO_SHOT = tasks.get("zero-shot-classification")


make_data = example_script(EXAMPLE_DIR / "make_data.py")
LABELS: dict[str, str] = make_data.LABELS
SPEC = TaskSpec(type="zero-shot-classification", labels=LABELS)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_pickles(directory: Path) -> None:
    pickled = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
    assert not pickled, f"pickle-format files written: {pickled}"


def _params(loaded: LoadedModel) -> int:
    """Logical weight count: int8 weights count as parameters even though they live in buffers."""
    return sum(p.numel() for p in loaded.model.parameters()) + quantized_numel(loaded.model)


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


def test_builtin_source_offers_two_real_size_classes() -> None:
    builtin = sources.get("builtin")
    assert builtin.known() == ["minilm-l3", "minilm-l6"]
    l6 = builtin.resolve(CandidateRef(builtin="minilm-l6"), None, None)
    l3 = builtin.resolve(CandidateRef(builtin="minilm-l3"), None, None)
    assert l6.params == 22_713_216  # all-MiniLM-L6-v2, counted from its safetensors header
    assert l3.params < l6.params and (l3.size_class, l6.size_class) == ("xs", "s")
    assert l6.tree_digest is None, "without a store nothing is built"


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


def test_load_jsonl_is_bounded_and_total(tmp_path: Path) -> None:
    """An over-long line, a non-UTF-8 line, a deeply nested line and an over-long text: each reported by
    line number, never read whole into memory, never a traceback."""
    from weightflow.contracts.limits import MAX_DATA_LINE_BYTES, MAX_TEXT_CHARS

    path = tmp_path / "hostile.jsonl"
    with path.open("wb") as fh:
        fh.write(b'{"id": "1", "text": "fine", "label": "a"}\n')
        fh.write(b'{"id": "2", "text": "' + b"x" * (MAX_DATA_LINE_BYTES * 3) + b'", "label": "a"}\n')
        fh.write(b'{"id": "3", "text": "\xff\xfe", "label": "a"}\n')
        fh.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
        fh.write(b'{"id": "5", "text": "' + b"y" * (MAX_TEXT_CHARS + 1) + b'", "label": "a"}\n')
        fh.write(b'{"id": "6", "text": "also fine", "label": "b"}\n')
    with pytest.raises(DatasetError) as info:
        load_jsonl(path, Example, label="data.eval")
    where = [p.split(": ", 1)[0] for p in info.value.problems]
    assert where == ["data.eval:2", "data.eval:3", "data.eval:4", "data.eval:5"], info.value.problems
    assert "longer than" in info.value.problems[0] and "not UTF-8" in info.value.problems[1]


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


def test_int8_linear_never_builds_the_whole_float_weight() -> None:
    """A wide output layer is computed a block of rows at a time; the result is the same."""
    from weightflow.shared.modeling.quantizers import int8_modules

    torch.manual_seed(0)
    wide = Int8Linear.from_float(nn.Linear(64, int8_modules.CHUNK_ELEMENTS // 64 * 2 + 5))
    x = torch.randn(3, 64)
    expected = x @ wide.dequantized_weight().T + (wide.bias if wide.bias is not None else 0)
    assert torch.allclose(wide(x), expected, atol=1e-4)


def test_int8_linear_serves_with_int8_kernels_and_saves_the_same_bytes() -> None:
    """Without gradients a CPU forward packs the weight for fbgemm's dynamic int8 linear and frees the int8
    buffer; the state dict (what is saved and hashed) is the same before and after."""
    from weightflow.shared.modeling.quantizers.int8_modules import int8_kernels

    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    q = Int8Linear.from_float(linear)
    q.dynamic_activations = True  # as load_int8 sets it for an encoder
    before = {k: v.clone() for k, v in q.state_dict().items()}
    x = torch.randn(5, 64)
    with torch.inference_mode():
        y, expected = q(x), linear(x)
    assert (y - expected).abs().max() < 0.05 * expected.abs().max()
    if int8_kernels():
        assert q.packed_bytes() == 64 * 48 and q.weight_int8.numel() == 0
    after = q.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(q.to_float().weight, Int8Linear.from_float(linear).dequantized_weight())


def test_a_packed_int8_linear_still_passes_gradients_and_packs_once_under_threads() -> None:
    """Once served (packed for fbgemm, whose kernel has no autograd), a forward with gradients on still reaches
    the input (LoRA's adapters below the layer learn through it); threads serving their first request together
    pack it once (the review saw 'scales and zero_points must match' in 12 of 200 four-thread trials)."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    def serve(layer: Int8Linear, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # per thread: the mode is thread-local
            out: torch.Tensor = layer(inputs)
            return out

    for _ in range(20):
        q = Int8Linear.from_float(linear)
        q.dynamic_activations = True
        x = torch.randn(5, 64)
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(serve, [q] * 4, [x] * 4))
        assert all(torch.equal(outs[0], o) for o in outs)
    x = torch.randn(5, 64, requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    expected = torch.autograd.grad(linear(x).sum(), x)[0]
    assert (x.grad - expected).abs().max() < 0.05 * expected.abs().max()


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


def test_loading_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        ZERO_SHOT.runtime().load(tmp_path / "nowhere", torch.device("cpu"))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        ZERO_SHOT.runtime().load(tmp_path, torch.device("cpu"))


def test_attach_needs_both_adapter_files(tmp_path: Path) -> None:
    loaded = LoadedModel(nn.Linear(2, 2), None, torch.device("cpu"), "zero-shot-classification", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        attach(loaded, tmp_path)


# --------------------------------------------------------------------------- real model (slow)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("candidates")
    return {name: materialize_candidate(name, root / name) for name in ("minilm-l6", "minilm-l3")}


@pytest.fixture(scope="module")
def l6(model_dirs: dict[str, Path]) -> LoadedModel:
    return ZERO_SHOT.runtime().load(model_dirs["minilm-l6"], pick_device())


@pytest.fixture(scope="module")
def int8_dir(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    loaded = ZERO_SHOT.runtime().load(model_dirs["minilm-l6"], pick_device())
    quantize_int8(loaded.model)
    yield save_quantized(loaded.model, loaded.tokenizer, tmp_path_factory.mktemp("int8") / "minilm-l6-int8")


@pytest.fixture(scope="module")
def int8(int8_dir: Path) -> LoadedModel:
    return ZERO_SHOT.runtime().load(int8_dir, pick_device())


@pytest.fixture(scope="module")
def eval_rows() -> list[Example]:
    return load_jsonl(EXAMPLE_DIR / "eval.jsonl", Example)


def _embed(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return ZERO_SHOT.runtime().embed(loaded, texts).cpu()  # type: ignore[attr-defined]


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
        assert inspect_checkpoint(directory).params == sources.get("builtin").resolve(
            CandidateRef(builtin=name), None, None).params


@pytest.mark.slow
def test_builtin_params_match_the_loaded_models(model_dirs: dict[str, Path], l6: LoadedModel) -> None:
    builtin = sources.get("builtin")
    l3 = ZERO_SHOT.runtime().load(model_dirs["minilm-l3"], torch.device("cpu"))
    assert _params(l6) == builtin.resolve(CandidateRef(builtin="minilm-l6"), None, None).params
    assert _params(l3) == builtin.resolve(CandidateRef(builtin="minilm-l3"), None, None).params
    assert l3.model.config.num_hidden_layers == 3
    last_kept = "encoder.layer.2.output.dense.weight"  # the FIRST three layers are the ones kept
    assert torch.equal(l3.model.get_parameter(last_kept), l6.model.get_parameter(last_kept).cpu())
    with pytest.raises(AttributeError):
        l3.model.get_parameter("encoder.layer.3.output.dense.weight")


@pytest.mark.slow
def test_embed_is_normalised_batched_and_meaningful(l6: LoadedModel) -> None:
    texts = ["I was charged twice, please refund me", "The app crashes on start", "Where is my parcel?"]
    one_by_one = torch.cat([_embed(l6, [t]) for t in texts])
    batched = _embed(l6, texts)
    assert batched.shape == (3, 384) and batched.dtype == torch.float32
    assert torch.allclose(batched.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(one_by_one, batched, atol=1e-5)
    assert ZERO_SHOT.runtime().predict(l6, SPEC, texts) == ["billing", "technical", "shipping"]


@pytest.mark.slow
def test_evaluate_measures_quality_speed_and_the_score_interval(l6: LoadedModel, eval_rows: list[Example]) -> None:
    m = ZERO_SHOT.runtime().evaluate(l6, SPEC, eval_rows[:96], "accuracy", HARDWARE)
    assert m.n == 96 and m.metric == "accuracy" and m.binary
    assert 0.6 < m.score < 0.97  # the demo set is calibrated to be hard but not hopeless
    assert m.interval is not None and m.interval.method == "wilson"
    assert m.interval.low < m.score < m.interval.high and m.interval.high - m.interval.low < 0.25
    assert {f"recall/{label}" for label in LABELS} <= set(m.extra) and 0 < m.extra["macro_f1"] <= 1
    assert 0 < m.latency_ms_p50 <= m.latency_ms_p95 and m.throughput_per_s > 0 and m.cost_per_1k_usd > 0
    samples = m.sample_rows  # the sample log, one row per input in order, for the caller to store
    assert samples is not None and [s.id for s in samples] == [r.id for r in eval_rows[:96]]
    assert [s.target for s in samples] == [r.label for r in eval_rows[:96]] and samples[0].input == eval_rows[0].text
    assert all(s.prediction in LABELS and s.score == float(s.prediction == s.target) for s in samples)
    assert sum(s.score for s in samples) / 96 == pytest.approx(m.score) and m.samples is None
    assert samples[0].latency_ms is not None and samples[-1].latency_ms is None, "the first rows are timed alone"
    f1 = ZERO_SHOT.runtime().evaluate(l6, SPEC, eval_rows[:96], "macro_f1", HARDWARE)
    assert f1.score == pytest.approx(m.extra["macro_f1"]) and not f1.binary
    assert f1.interval is not None and f1.interval.method == "bootstrap" and f1.score_std and f1.score_std > 0
    stray = [*eval_rows[:3], Example(id="x", text="hello", label="sales")]
    with pytest.raises(ValueError, match="sales"):
        ZERO_SHOT.runtime().evaluate(l6, SPEC, stray, "accuracy", HARDWARE)


@pytest.mark.slow
def test_general_score_tracks_general_ability(l6: LoadedModel) -> None:
    pairs = load_jsonl(EXAMPLE_DIR / "general.jsonl", Pair)
    assert ZERO_SHOT.runtime().general_score(l6, SPEC, pairs) > 0.7
    # row by row (what the tuning gate pairs): (cosine, gold) per pair, the score their Spearman
    outputs = ZERO_SHOT.runtime().general_outputs(l6, SPEC, pairs)
    assert outputs is not None and outputs.values.shape == (len(pairs), 2)
    assert outputs.score == ZERO_SHOT.runtime().general_score(l6, SPEC, pairs)
    assert list(outputs.values[:, 1]) == [p.score for p in pairs]


@pytest.mark.slow
def test_int8_reloads_identically_at_a_quarter_of_the_bytes(
    model_dirs: dict[str, Path], l6: LoadedModel, int8_dir: Path, int8: LoadedModel, tmp_path: Path
) -> None:
    manifest = json.loads((int8_dir / "quantization.json").read_text())
    assert manifest["scheme"] == "int8-weight-only" and manifest["format_version"] == 1
    assert "embeddings.word_embeddings" in manifest["modules"]
    assert "encoder.layer.5.output.dense" in manifest["modules"]
    _no_pickles(int8_dir)

    in_memory = ZERO_SHOT.runtime().load(model_dirs["minilm-l6"], l6.device)
    quantize_int8(in_memory.model)
    resaved = save_quantized(in_memory.model, in_memory.tokenizer, tmp_path / "again")
    assert _sha256(resaved / "model.safetensors") == _sha256(int8_dir / "model.safetensors")
    texts = ["my refund has not arrived", "the login page is blank", "reset my password please"]
    assert (_embed(int8, texts) - _embed(in_memory, texts)).abs().max() < 1e-5
    assert _params(int8) == _params(l6)
    assert 3.5 <= weight_bytes(l6.model) / weight_bytes(int8.model) <= 4.0
    error = (1 - (_embed(l6, texts) * _embed(int8, texts)).sum(dim=1)).mean()
    # int8 runs fbgemm's dynamic int8 linear: activations are quantized too (per token, 7 bits on x86), so
    # the embeddings move ~0.02 in cosine where weight-only int8 moved 5e-4 (accuracy: bench/RESULTS.md §5)
    assert 0 < float(error) < 0.05

    from transformers import AutoModel

    unpacked = load_int8(int8_dir, AutoModel, l6.device, dequantize=True)
    assert not any(isinstance(m, Int8Linear | Int8Embedding) for m in unpacked.modules())
    name = "encoder.layer.5.output.dense"  # the float twin holds exactly the int8 weights (packed or not)
    assert torch.equal(unpacked.get_submodule(name).weight, int8.model.get_submodule(name).dequantized_weight())
    as_float = LoadedModel(unpacked, int8.tokenizer, int8.device, int8.task, int8_dir)
    assert (1 - (_embed(as_float, texts) * _embed(int8, texts)).sum(dim=1)).mean() < 0.05


@pytest.fixture(scope="module")
def adapter(int8: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    train = load_jsonl(EXAMPLE_DIR / "train.jsonl", Example)
    out = tmp_path_factory.mktemp("adapter") / "lora"
    report = train_lora(ZERO_SHOT, int8, SPEC, train, out, LoraSettings(epochs=1))
    return out, report


@pytest.mark.slow
def test_train_lora_trains_only_the_adapter_and_saves_safetensors(adapter: tuple[Path, TrainResult]) -> None:
    out, report = adapter
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".md") == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    _no_pickles(out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] is None, "a pinned file names no host path (the base is pinned by digest)"
    assert config["target_modules"] == ["query", "value"], "peft's set, sorted: its order varied with the hash seed"
    assert report.steps == 19 and report.epochs == 1  # ceil(300 / 16)
    assert report.trainable_params == 6 * 2 * (8 * 384 + 384 * 8)  # r=8 on query and value in 6 layers
    assert report.total_params == 22_713_216 + report.trainable_params
    assert report.loss_last < report.loss_first
    assert [step for step, _ in report.loss_curve] == list(range(1, 20)), "the loss at every one of the 19 steps"
    assert report.loss_curve[0][1] == report.loss_first
    assert loss_curve([1.0, 3.0, 2.0, 4.0, 5.0], points=2) == [(3, 2.0), (5, 4.5)], "runs of steps averaged"
    assert report.settings["target_modules"] == ["query", "value"]


@pytest.mark.slow
def test_attach_serves_what_peft_trained(
    int8_dir: Path, int8: LoadedModel, adapter: tuple[Path, TrainResult], eval_rows: list[Example]
) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    out, _ = adapter
    base = load_int8(int8_dir, AutoModel, int8.device, dequantize=True)
    with_peft = LoadedModel(PeftModel.from_pretrained(base, str(out)).eval(), int8.tokenizer, int8.device,
                            int8.task, int8_dir)
    fp32_base = LoadedModel(load_int8(int8_dir, AutoModel, int8.device, dequantize=True), int8.tokenizer,
                            int8.device, int8.task, int8_dir)
    ours = attach(fp32_base, out)
    texts = [row.text for row in eval_rows[:16]]
    assert (_embed(ours, texts) - _embed(with_peft, texts)).abs().max() < 1e-4
    assert sum(isinstance(m, LoraWrapped) for m in ours.model.modules()) == 12
    assert not any(isinstance(m, LoraWrapped) for m in fp32_base.model.modules())  # input left untouched

    tuned = tuners.get("lora").attach(int8, out)
    int8_layers = [m for m in tuned.model.modules() if isinstance(m, Int8Linear)]
    assert int8_layers and all(m.dynamic_activations for m in int8_layers)  # an encoder: fbgemm's kernels serve
    # they quantize activations per call, so an int8 base differs from its dequantized copy by a little; the
    # adapter on top adds nothing to that (it was trained on the weight-only path, which is what the copy computes)
    kernel_skew = float((_embed(int8, texts) - _embed(fp32_base, texts)).abs().max())
    assert 0 < kernel_skew < 0.1
    assert float((_embed(tuned, texts) - _embed(ours, texts)).abs().max()) < 2 * kernel_skew
    try:
        for layer in int8_layers:
            layer.dynamic_activations = False
        assert (_embed(tuned, texts) - _embed(ours, texts)).abs().max() < 1e-5  # the weight-only path: exactly
    finally:
        for layer in int8_layers:
            layer.dynamic_activations = True


@pytest.mark.slow
def test_demo_is_calibrated_around_its_threshold(
    model_dirs: dict[str, Path],
    l6: LoadedModel,
    int8: LoadedModel,
    adapter: tuple[Path, TrainResult],
    eval_rows: list[Example],
) -> None:
    """The support-tickets story: l3 too far below the threshold to tune, l6 (fp32 and int8) a small
    gap below it, and even a one-epoch adapter clears it without costing general ability."""
    l3 = ZERO_SHOT.runtime().load(model_dirs["minilm-l3"], l6.device)
    tuned = attach(int8, adapter[0])
    accuracy = {
        name: ZERO_SHOT.runtime().evaluate(loaded, SPEC, eval_rows, "accuracy", HARDWARE).score
        for name, loaded in (("l3", l3), ("l6", l6), ("int8", int8), ("tuned", tuned))
    }
    assert accuracy["l3"] < DEMO_THRESHOLD - DEMO_TUNABLE_GAP, accuracy  # too far below: size up
    assert DEMO_THRESHOLD - 0.05 < accuracy["l6"] < DEMO_THRESHOLD, accuracy  # a small, tunable gap
    assert abs(accuracy["int8"] - accuracy["l6"]) <= 0.01, accuracy
    assert accuracy["tuned"] >= DEMO_THRESHOLD, accuracy
    pairs = load_jsonl(EXAMPLE_DIR / "general.jsonl", Pair)
    drop = ZERO_SHOT.runtime().general_score(int8, SPEC, pairs) - ZERO_SHOT.runtime().general_score(tuned, SPEC, pairs)
    assert drop < 0.02


@pytest.mark.slow
def test_train_lora_is_deterministic(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    rows = load_jsonl(EXAMPLE_DIR / "train.jsonl", Example)[:24]
    settings = LoraSettings(epochs=1, batch_size=12, seed=7)
    base = ZERO_SHOT.runtime().load(model_dirs["minilm-l3"], pick_device())
    first = train_lora(ZERO_SHOT, base, SPEC, rows, tmp_path / "a", settings)
    second = train_lora(ZERO_SHOT, base, SPEC, rows, tmp_path / "b", settings)
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 3 * 2 * 2
    tolerance = 0.0 if base.device.type == "cpu" else 1e-5
    assert all((a[k] - b[k]).abs().max() <= tolerance for k in a)
    assert first.loss_first == pytest.approx(second.loss_first, abs=tolerance)
    assert any(bool(a[k].abs().max() > 0) for k in a if "lora_B" in k)  # B starts at zero; it moved


@pytest.mark.slow
def test_repository_code_in_a_checkpoint_is_never_run(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint that asks for its own Python (auto_map) is refused before anything is stored, and even
    loaded directly it loads as the stock architecture or not at all: the shipped module is never imported."""
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
    with pytest.raises(CheckpointError, match="auto_map"):
        inspect_checkpoint(hostile)
    try:
        loaded = ZERO_SHOT.runtime().load(hostile, pick_device())
        assert type(loaded.model).__module__.startswith("transformers.")
    except ValueError as exc:  # transformers may refuse outright: just as good
        assert "trust_remote_code" in str(exc)
    assert not sentinel.exists()


@pytest.mark.parametrize(("given", "services", "serve"), [
    ({}, "PASSIVE", "None"),  # ours: workers sleep at once (services share cores); a server spins first
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE", "ACTIVE"),  # the user's choice holds everywhere
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE", "PASSIVE"),
    ({"OMP_WAIT_POLICY": "PASSIVE", "WEIGHTFLOW_OMP_WAIT_POLICY_DEFAULTED": "PASSIVE"}, "PASSIVE", "None"),  # inherited
    ({"OMP_WAIT_POLICY": "ACTIVE", "WEIGHTFLOW_OMP_WAIT_POLICY_DEFAULTED": "PASSIVE"}, "ACTIVE", "ACTIVE"),  # set since
])
def test_openmp_wait_policy_is_passive_for_services_and_openmp_s_own_for_a_server(
        given: dict[str, str], services: str, serve: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "WEIGHTFLOW_OMP_WAIT_POLICY_DEFAULTED")}
    script = ("import os, shared.modeling as m; before = os.environ.get('OMP_WAIT_POLICY'); m.openmp_spins(); "
              "print(before, os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", script], env=env | given, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == [services, serve]
