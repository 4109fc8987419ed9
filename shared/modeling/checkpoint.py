"""What a checkpoint directory is, read from its files without loading a weight (and without torch).

A user's checkpoint is checked before anything is stored or published: safetensors weights only
(a pickle checkpoint is refused with how to convert it), no repository code (`auto_map`), a config
transformers knows, every shard of a sharded checkpoint present, and the parameter count summed from
the safetensors headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightflow.contracts.limits import MAX_CONFIG_BYTES
from weightflow.shared.safetensors_check import UnsafeArtifactError, strict_json_loads, validate_safetensors

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "vocab.json")
INDEX = "model.safetensors.index.json"
CONVERT_HINT = ("convert it once with transformers: AutoModel.from_pretrained(dir).save_pretrained(out, "
                "safe_serialization=True) (in an environment you trust: loading a pickle runs its code)")


class CheckpointError(ValueError):
    """A checkpoint weightflow will not load; the message says what to fix."""


@dataclass(frozen=True)
class CheckpointInfo:
    directory: Path
    config: dict[str, Any]
    weight_files: tuple[str, ...]
    params: int
    weight_bytes: int
    id2label: dict[int, str] | None = field(default=None)

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def is_decoder(self) -> bool:
        return bool(self.config.get("is_decoder")) or any("CausalLM" in a for a in self.architectures)

    @property
    def has_sequence_classification_head(self) -> bool:
        return any(a.endswith("ForSequenceClassification") for a in self.architectures)


def _read_json(path: Path, what: str) -> Any:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {what} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return strict_json_loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({exc})") from None


def known_model_types() -> frozenset[str]:
    """Model types transformers ships code for (imports transformers, hence torch: call lazily)."""
    from transformers.models.auto import configuration_auto

    return frozenset(configuration_auto.CONFIG_MAPPING_NAMES)  # type: ignore[attr-defined]


def _weight_files(directory: Path) -> list[str]:
    index = directory / INDEX
    if index.is_file():
        doc = _read_json(index, "the shard index")
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        shards = sorted({str(v) for v in weight_map.values()})
        missing = [s for s in shards if "/" in s or ".." in s or not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{directory}: shards named in {INDEX} are missing: {missing[:5]}")
        return shards
    if (directory / "model.safetensors").is_file():
        return ["model.safetensors"]
    return []


def inspect_checkpoint(directory: Path, *, check_architecture: bool = True) -> CheckpointInfo:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a model directory (it does not exist or is a file)")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    weights = _weight_files(directory)
    if not weights:
        if pickles:
            raise CheckpointError(f"{directory} holds pickle weights ({', '.join(pickles)}), which weightflow never "
                                  f"loads (loading a pickle runs code); {CONVERT_HINT}")
        raise CheckpointError(f"{directory} has no model.safetensors (or sharded model-*.safetensors with {INDEX})")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no config.json; save the model with save_pretrained")
    config = _read_json(config_path, "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is not a JSON object")
    if config.get("auto_map"):
        raise CheckpointError(f"{config_path} names its own model code (auto_map: {sorted(config['auto_map'])}); "
                              "weightflow never runs a checkpoint's code (trust_remote_code=False). Use an "
                              "architecture transformers ships")
    if config.get("quantization_config") and config["quantization_config"].get("quant_method") == "gguf":
        raise CheckpointError(f"{config_path} is a GGUF-quantized config; save a dequantized copy first")
    if check_architecture and config.get("model_type") not in known_model_types():
        raise CheckpointError(f"{config_path}: model_type {config.get('model_type')!r} is not an architecture "
                              "transformers knows")
    if not any((directory / t).is_file() for t in TOKENIZER_FILES):
        raise CheckpointError(f"{directory} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save it beside the "
                              "model with tokenizer.save_pretrained")
    params = 0
    weight_bytes = 0
    for name in weights:
        try:
            header = validate_safetensors(directory / name)
        except UnsafeArtifactError as exc:
            raise CheckpointError(str(exc)) from None
        for entry in header.values():
            params += math.prod(entry["shape"])
        weight_bytes += (directory / name).stat().st_size
    id2label = config.get("id2label")
    labels = {int(k): str(v) for k, v in id2label.items()} if isinstance(id2label, dict) else None
    return CheckpointInfo(directory, config, tuple(weights), params, weight_bytes, labels)


def tree_config(files: dict[str, str], read_json: Any) -> dict[str, Any]:
    """config.json of a stored tree, via the store's verified reader."""
    if "config.json" not in files:
        raise CheckpointError("the stored checkpoint has no config.json")
    config = read_json(files["config.json"])
    if not isinstance(config, dict):
        raise CheckpointError("the stored checkpoint's config.json is not an object")
    return config

