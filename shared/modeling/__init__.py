"""Model layer of weightflow: candidates, encoders, data, evaluation, int8 quantization and LoRA."""

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
