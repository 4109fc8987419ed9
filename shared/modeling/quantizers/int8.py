"""The `int8` scheme: weight-only INT8 that runs anywhere torch runs and serialises with safetensors.

Weights are stored as int8 with one fp32 scale per output channel (per row for embeddings), so memory for
weights drops ~4x; on an x86 CPU linear layers serve with PyTorch's dynamic int8 kernels (activations
quantized per call), elsewhere by blocks of dequantized rows. Written here
rather than taken from torchao because torchao's int8 weight-only leaves embeddings in fp32, and for a
small encoder the embedding table is half the parameters. The torch code lives in `int8_modules`, so
registering the scheme (and validating requirements) imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.protocols import Quantizer, Task
from weightflow.shared.modeling.registry import quantizers

LAYOUT_FILE = "quantization.json"
# Weight elements a layer turns to float at once. Decoding (a few rows of activations, memory-bound) takes 1 MiB
# blocks, which stay in L2: SmolLM2-135M int8 generates 1.25x faster than with 8 MiB ones; a prefill (many rows,
# compute-bound) takes 8 MiB ones: 1 MiB blocks made it 1.3x slower (RESULTS §15).
BLOCK_ELEMENTS = 1 << 18
PREFILL_BLOCK_ELEMENTS = 1 << 21
DECODE_ROWS = 64  # activation rows up to which a forward counts as decoding


class Int8WeightOnly(Quantizer):
    scheme: ClassVar[str] = "int8"
    bytes_per_param: ClassVar[float] = 1.0
    expected_quality_loss: ClassVar[float] = 0.005

    def quantize(self, task: Task, model_dir: Path, out_dir: Path, spec: TaskSpec, calibration: Sequence[Any],
                 device: Any) -> Path:
        from weightflow.shared.modeling.quantizers.int8_modules import quantize_int8, save_quantized

        loaded = task.runtime().load(model_dir, device)
        quantize_int8(loaded.model)
        return save_quantized(loaded.model, loaded.tokenizer, out_dir)

    def predict_weight_bytes(self, params: int, arch: Any) -> int:
        """One byte a weight plus an fp32 scale a row; a tied output layer is stored apart from the
        embedding it shares (a second copy of vocab x hidden)."""
        return int(params * self.bytes_per_param) + (arch.embedding_params if arch.tied else 0)

    def working_bytes(self, arch: Any, batch: int, seq: int) -> int:
        """A block of weights in float, and a second output-sized tensor of the widest layer: the block path's
        product of one block before it is copied into the preallocated output, and what the allocator keeps beside
        it (calibrated against the measured peak, bench/RESULTS.md §15; the int8 kernel path fills a preallocated
        output from a chunk of scaled rows)."""
        widest = int(max(arch.intermediate, arch.hidden))
        block = min(PREFILL_BLOCK_ELEMENTS, arch.hidden * widest)  # in float, and the GEMM's packed copy of it
        return int(4 * (2 * block + batch * seq * widest))

    def detects(self, model_dir: Path) -> bool:
        return (Path(model_dir) / LAYOUT_FILE).is_file()

    def load(self, model_dir: Path, auto_class: Any, device: Any) -> Any:
        from weightflow.shared.modeling.quantizers.int8_modules import load_int8

        return load_int8(model_dir, auto_class, device)

    def make_trainable(self, model: Any) -> Any:
        from weightflow.shared.modeling.quantizers.int8_modules import dequantize_int8

        return dequantize_int8(model)


quantizers.register(Int8WeightOnly.scheme, Int8WeightOnly())
