"""4-bit checkpoints (compressed-tensors' pack-quantized layout) served packed: same numbers as transformers'
decompress-at-load path, no float weight held between calls, refused when a tensor is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from safetensors.torch import load_file, save_file

from weightflow.shared.modeling.loading import load_checkpoint
from weightflow.shared.modeling.quantizers.int4_modules import Int4Linear, load_int4

from ..lm_fixtures import tiny_llama

GROUP = 16


def quantize_to_packed(directory: Path) -> Path:
    """Write what llmcompressor's W4A16 writes (symmetric int4 by groups of 16, lm_head left alone), by hand:
    the test needs no llmcompressor environment."""
    state = load_file(str(directory / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for key, weight in state.items():
        if not key.endswith("proj.weight"):
            out[key] = weight
            continue
        name, (rows, cols) = key.removesuffix(".weight"), weight.shape
        groups = weight.view(rows, cols // GROUP, GROUP)
        scale = groups.abs().amax(-1) / 7.5
        q = torch.round(groups / scale[..., None]).clamp(-8, 7).to(torch.int8).view(rows, cols)
        out |= {
            f"{name}.weight_packed": pack_to_int32(q, 4),
            f"{name}.weight_scale": scale,
            f"{name}.weight_shape": torch.tensor([rows, cols]),
        }
    save_file(out, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": 4,
                    "type": "int",
                    "strategy": "group",
                    "group_size": GROUP,
                    "symmetric": True,
                    "dynamic": False,
                },
            }
        },
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def packed_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_to_packed(tiny_llama(tmp_path_factory.mktemp("int4") / "model"))


def test_packed_layers_compute_what_transformers_decompressed_model_computes(packed_lm: Path) -> None:
    # transformers decompresses every layer to float at load (the path this module replaces); eval() is torch's
    reference: torch.nn.Module = transformers.AutoModelForCausalLM.from_pretrained(
        str(packed_lm), local_files_only=True, dtype=torch.float32
    )
    reference.eval()
    served = load_checkpoint(packed_lm, "AutoModelForCausalLM", torch.device("cpu"))
    assert sum(isinstance(m, Int4Linear) for m in served.modules()) == 14  # 7 projections x 2 layers
    ids = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, served(ids).logits)


def test_no_float_weight_is_held_by_a_packed_layer(packed_lm: Path) -> None:
    served = load_int4(packed_lm, transformers.AutoModelForCausalLM, torch.device("cpu"))
    layer = served.get_submodule("model.layers.0.mlp.down_proj")
    with torch.no_grad():
        served(torch.tensor([[1, 2, 3]]))
    held = {name: t.dtype for name, t in [*layer.named_parameters(), *layer.named_buffers()]}
    assert held == {"weight_packed": torch.int32, "weight_scale": torch.float32, "weight_shape": torch.int64}
    tied = served.get_submodule("lm_head").weight is served.get_submodule("model.embed_tokens").weight
    assert tied, "the output layer shares the embedding, as in the checkpoint"


def test_a_missing_packed_tensor_is_refused_by_name(packed_lm: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in packed_lm.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    state = load_file(str(broken / "model.safetensors"))
    del state["model.layers.1.input_layernorm.weight"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.input_layernorm\.weight"):
        load_int4(broken, transformers.AutoModelForCausalLM, torch.device("cpu"))


@pytest.mark.parametrize(("change", "claimed"), [({}, True), ({"format": "naive-quantized"}, False),
                                                 ({"format": "float-quantized"}, False),
                                                 ({"config_groups": {"a": {"targets": ["Linear"]},
                                                                     "b": {"targets": ["Embedding"]}}}, False)])
def test_only_the_packed_layout_is_claimed_other_compressed_checkpoints_stay_with_transformers(
        packed_lm: Path, tmp_path: Path, change: dict[str, object], claimed: bool) -> None:
    """A team's own compressed-tensors checkpoint in another layout loaded through transformers before the packed
    loader existed; the loader must not claim it only to refuse it (review finding)."""
    from weightflow.shared.modeling.registry import quantizers

    config = json.loads((packed_lm / "config.json").read_text())
    config["quantization_config"] |= change
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert quantizers.get("w4a16").detects(tmp_path) is claimed
