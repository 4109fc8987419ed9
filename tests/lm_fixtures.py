"""A tiny causal LM made by code: a byte-level BPE tokenizer trained on stdlib text and a random Llama.

Its answers are nonsense, which is the point: it exercises every code path of the language-model tasks,
the KV-cache budget and LoRA in seconds."""

from __future__ import annotations

from pathlib import Path


def corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [line for text in topics.values() for line in text.splitlines() if len(line.split()) > 3][:4000]


def tiny_llama(directory: Path, *, hidden: int = 32, layers: int = 2, vocab: int = 512) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(str(directory), safe_serialization=True)
    return directory


TINY_LM_DOC = """name: tiny-lm
task:
  type: generation
  prompt: "Q: {input}\\nA:"
  max_new_tokens: 8
data: {eval: eval.jsonl, canary: canary.jsonl, general: general.jsonl}
quality: {metric: exact_match, threshold: 0.5, tunable_gap: 0}
latency: {p95_ms: 5000}
cost: {per_1k_tasks_usd: 1.0}
deployment:
  name: tiny-lm
  mode: self-hosted
  hardware: {profile: cpu, device: cpu, memory_mb: 4096, cost_per_hour_usd: 0.1}
candidates: [{path: model}]
"""


def tiny_lm_deployment(folder: Path, inputs: list[str] | None = None) -> Path:
    """The tiny Llama as the one candidate of a generation requirements doc (deployment `tiny-lm`), with
    eval/canary rows on `inputs` (default: twelve sums) and a little general prose; returns the doc."""
    import json

    tiny_llama(folder / "model")
    inputs = inputs or [f"what is {i} plus one?" for i in range(12)]
    rows = [{"id": str(i), "input": text, "target": str(i + 1)} for i, text in enumerate(inputs)]
    for split in ("eval", "canary"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "general.jsonl").write_text("".join(json.dumps({"id": str(i), "text": f"plain text line {i}"}) + "\n"
                                                  for i in range(8)))
    (folder / "requirements.yaml").write_text(TINY_LM_DOC)
    return folder / "requirements.yaml"
