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


def quantize_to_packed(directory: Path, *, symmetric: bool = True,
                       dequantized: dict[str, torch.Tensor] | None = None) -> Path:
    """Write what llmcompressor writes (int4 by groups of 16, lm_head left alone), by hand: the test needs no
    llmcompressor environment. Symmetric: W4A16's scale only. Asymmetric (what `awq` writes now; `w4a16`
    stays symmetric): a scale and an integer zero point per group, q = round(w / scale) + zero_point in
    [-8, 7], the zero points packed eight a word along the output dimension. `dequantized` receives
    (q - zero_point) * scale per layer, computed here, not by compressed-tensors."""
    state = load_file(str(directory / "model.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for key, weight in state.items():
        if not key.endswith("proj.weight"):
            out[key] = weight
            continue
        name, (rows, cols) = key.removesuffix(".weight"), weight.shape
        groups = weight.view(rows, cols // GROUP, GROUP)
        if symmetric:
            scale = groups.abs().amax(-1) / 7.5
            zero = torch.zeros_like(scale)
        else:
            low, high = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
            scale = (high - low) / 15
            zero = (-8 - torch.round(low / scale)).clamp(-8, 7)
        q = (torch.round(groups / scale[..., None]) + zero[..., None]).clamp(-8, 7).to(torch.int8).view(rows, cols)
        out |= {
            f"{name}.weight_packed": pack_to_int32(q, 4),
            f"{name}.weight_scale": scale,
            f"{name}.weight_shape": torch.tensor([rows, cols]),
        }
        if dequantized is not None:
            dequantized[key] = ((q.view(rows, -1, GROUP) - zero[..., None]) * scale[..., None]).view(rows, cols)
        if not symmetric:
            out[f"{name}.weight_zero_point"] = pack_to_int32(zero.to(torch.int8), 4, packed_dim=0)
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
                    "symmetric": symmetric,
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



def test_asymmetric_packed_layers_compute_the_model_dequantized_by_hand(tmp_path: Path) -> None:
    """Zero points (asymmetric groups, what `awq` writes): the served logits are those of the fp32
    model holding (q - zero_point) * scale, each weight within half a step of the original. The reference is
    dequantized here because transformers 5.24 with compressed-tensors 0.20.1 refuses this layout at load (it
    expects the zero points unpacked: 'weight_zero_point ... ckpt [72, 9] vs model [576, 9]' on SmolLM2)."""
    directory = tiny_llama(tmp_path / "model")
    reference: torch.nn.Module = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), local_files_only=True, dtype=torch.float32)
    reference.eval()
    original = {k: v.clone() for k, v in reference.state_dict().items()}
    dequantized: dict[str, torch.Tensor] = {}
    quantize_to_packed(directory, symmetric=False, dequantized=dequantized)
    reference.load_state_dict(dequantized, strict=False)
    served = load_checkpoint(directory, "AutoModelForCausalLM", torch.device("cpu"))
    layer = served.get_submodule("model.layers.0.mlp.down_proj")
    assert isinstance(layer, Int4Linear) and layer.weight_zero_point is not None and layer.weight_zero_point.any()
    step = layer.weight_scale.repeat_interleave(GROUP, dim=1)
    assert ((layer.dequantized_weight() - original["model.layers.0.mlp.down_proj.weight"]).abs()
            <= step / 2 + 1e-6).all()
    ids = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, served(ids).logits)
