"""`w4a16` and `awq`: 4-bit weights (16-bit activations) in the compressed-tensors format, by llmcompressor.

Written by llmcompressor in its own environment (quant_env.py) and loaded by plain transformers with
compressed-tensors. Linear layers are quantized in groups (the largest of 128/64/32/16 that divides
every layer's input width: SmolLM2's 576 needs 64); lm_head stays unquantized. `awq` calibrates
activation-aware scales on the train split (64 samples: minutes on CPU) and its groups are asymmetric
(a scale and a zero point each, as AWQ's reference: on SmolLM2-135M they cut its KL divergence from fp32 by
a third against symmetric ones, docs/verified.md); `w4a16` rounds to nearest, symmetric.

Served from the packed weights (`int4_modules`: each linear layer dequantizes its own weight per call,
never the whole model; transformers' own load decompressed every layer to fp32 at load time). A CPU
target is still skipped: with no int4 kernels every call pays a dequantization, so int8 is the CPU
scheme. An adapter cannot be trained on a compressed base (peft needs `.weight`): the tuner trains on
the unquantized base and the adapter is served on the 4-bit model.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.protocols import Quantizer, Task
from weightflow.shared.modeling.quantizers import quant_env
from weightflow.shared.modeling.registry import quantizers

WORKER = Path(__file__).with_name("llmcompressor_worker.py")
GROUP_SIZES = (128, 64, 32, 16)
TIMEOUT_S = 3600


def group_size(config: dict[str, Any]) -> int:
    widths = [int(config[k]) for k in ("hidden_size", "intermediate_size") if config.get(k)]
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if heads and head_dim:
        widths.append(int(heads) * int(head_dim))
    common = math.gcd(*widths) if widths else 128
    for size in GROUP_SIZES:
        if common % size == 0:
            return size
    raise ValueError(f"no 4-bit group size in {GROUP_SIZES} divides the layer widths {widths}")


class CompressedTensors4Bit(Quantizer):
    method: ClassVar[str]
    bytes_per_param: ClassVar[float] = 0.5 + 2 / 64  # packed int4 plus one fp16 scale per group
    trains_on_base: ClassVar[bool] = True

    def predict_weight_bytes(self, params: int, arch: Any) -> int:
        """Linear layers in 4 bits; the input embedding, and an untied output layer, stay in fp32."""
        full = arch.embedding_params * (1 if arch.tied else 2) if arch.vocab else 0
        return int(full * 4 + max(params - full, 0) * self.bytes_per_param)

    def working_bytes(self, arch: Any, batch: int, seq: int) -> int:
        """One layer's weight dequantized to float for its call, and its output."""
        widest = max(arch.intermediate, arch.hidden)
        return int(4 * (arch.hidden * widest + batch * seq * widest))

    def unavailable(self, device: str) -> str | None:
        if device == "cpu":
            return ("4-bit weights have no kernels on a cpu (each layer is dequantized at every call): use int8, "
                    "or a cuda target")
        if quant_env.find(self._settings_python()) is None:
            return ("the quantization environment (llmcompressor) is not set up: run `weightflow "
                    "setup-quantization`, or set WEIGHTFLOW_QUANT_PYTHON")
        return None

    def detects(self, model_dir: Path) -> bool:
        """A compressed-tensors checkpoint in the one packed layout this loader serves (either 4-bit scheme
        writes it); any other compressed-tensors checkpoint a team brings is left to transformers, as before."""
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            return False
        quant = json.loads(path.read_text()).get("quantization_config") or {}
        if quant.get("quant_method") != "compressed-tensors":
            return False
        from weightflow.shared.modeling.quantizers.int4_modules import read_config

        try:
            read_config(Path(model_dir))
        except ValueError:
            return False
        return True

    def load(self, model_dir: Path, auto_class: Any, device: Any) -> Any:
        """Packed weights, dequantized a layer at a time in forward (never the whole model in fp32)."""
        from weightflow.shared.modeling.quantizers.int4_modules import load_int4

        return load_int4(model_dir, auto_class, device)

    @staticmethod
    def _settings_python() -> Path | None:
        from weightflow.shared.settings import Settings

        return Settings().quant_python

    def quantize(self, task: Task, model_dir: Path, out_dir: Path, spec: TaskSpec, calibration: Sequence[Any],
                 device: Any) -> Path:
        python = quant_env.find(self._settings_python())
        if python is None:
            raise RuntimeError(self.unavailable("cuda") or "no quantization environment")
        config = json.loads((Path(model_dir) / "config.json").read_text())
        texts = task.calibration_texts(spec, calibration)[: self.calibration_samples]
        with tempfile.TemporaryDirectory(prefix="wf-quant-") as tmp:
            request = Path(tmp) / "request.json"
            result = Path(tmp) / "result.json"
            request.write_text(json.dumps({"source": str(model_dir), "out": str(out_dir), "method": self.method,
                                           "group_size": group_size(config), "symmetric": self.symmetric,
                                           "texts": texts,
                                           "result": str(result)}))
            proc = subprocess.run([str(python), "-I", str(WORKER), str(request)], capture_output=True, text=True,
                                  timeout=TIMEOUT_S, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                                          "OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"})
            if proc.returncode != 0:
                raise RuntimeError(f"{self.scheme} quantization failed (exit {proc.returncode}): "
                                   f"{proc.stderr.strip()[-1500:]}")
            (Path(out_dir) / "weightflow-quantization.json").write_text(result.read_text())
        return Path(out_dir)

    calibration_samples: ClassVar[int] = 16
    symmetric: ClassVar[bool] = True


class W4A16(CompressedTensors4Bit):
    scheme: ClassVar[str] = "w4a16"
    method: ClassVar[str] = "rtn"
    expected_quality_loss: ClassVar[float] = 0.03


class AWQ(CompressedTensors4Bit):
    scheme: ClassVar[str] = "awq"
    method: ClassVar[str] = "awq"
    expected_quality_loss: ClassVar[float] = 0.02
    # the train split's first 64 rows: on SmolLM2-135M 8 left reviews at 0.71, 64 at 0.84 (fp32 0.90); on CPU
    # ~5 s a sample after ~60 s (77 s for 8, 318 s for 64 on one thread: docs/verified.md)
    calibration_samples: ClassVar[int] = 64
    symmetric: ClassVar[bool] = False
    bytes_per_param: ClassVar[float] = CompressedTensors4Bit.bytes_per_param + 0.5 / 64  # an int4 zero point a group


quantizers.register(W4A16.scheme, W4A16())
quantizers.register(AWQ.scheme, AWQ())
