"""Model layer of weightflow: candidates, encoders, data, evaluation, int8 quantization and LoRA."""

import os

# The only door through which weightflow loads torch, so OpenMP's wait policy is set here, before it
# loads. Several torch processes share the CPU (one per service, plus whatever else runs there); with
# the default spin-waiting a descheduled worker stalls every parallel region: measured on 2 cores beside
# one busy process, per-request p95 latency went from 25 ms to 790 ms. Passive waiting keeps it honest.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# (the imports below must stay after the setting above)

from shared.modeling.catalog import (
    CandidateSpec,
    UnknownModelError,
    candidate_spec,
    known_candidates,
    materialize_candidate,
    size_class,
)
from shared.modeling.datasets import DatasetError, Example, Pair, dataset_digest, load_jsonl
from shared.modeling.device import pick_device
from shared.modeling.encoder import Encoder, load_encoder
from shared.modeling.evaluation import (
    ClassificationResult,
    SimilarityResult,
    classify,
    evaluate_classification,
    evaluate_similarity,
)
from shared.modeling.lora import LoraSettings, LoraWrapped, TrainReport, attach_adapter, train_lora
from shared.modeling.quantization import (
    Int8Embedding,
    Int8Linear,
    quantization_error,
    quantize_int8,
    save_quantized,
)

__all__ = [
    "CandidateSpec",
    "ClassificationResult",
    "DatasetError",
    "Encoder",
    "Example",
    "Int8Embedding",
    "Int8Linear",
    "LoraSettings",
    "LoraWrapped",
    "Pair",
    "SimilarityResult",
    "TrainReport",
    "UnknownModelError",
    "attach_adapter",
    "candidate_spec",
    "classify",
    "dataset_digest",
    "evaluate_classification",
    "evaluate_similarity",
    "known_candidates",
    "load_encoder",
    "load_jsonl",
    "materialize_candidate",
    "pick_device",
    "quantization_error",
    "quantize_int8",
    "save_quantized",
    "size_class",
    "train_lora",
]
