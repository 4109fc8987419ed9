"""Derive the ticket-priority example's two candidate checkpoints from the packaged MiniLM encoder.

Run `python examples/ticket-priority/make_models.py` once (a few minutes on 2 CPU cores); it writes
`models/priority-l3` and `models/priority-l6` next to this script: ordinary Hugging Face
`BertForSequenceClassification` directories (safetensors, tokenizer, id2label P1/P2/P3) fine-tuned on
train.jsonl from the first 3 or all 6 layers of all-MiniLM-L6-v2. They are what a team brings: its own
fine-tuned classifiers, named in requirements.yaml with `path:`. Fixed seeds make the bytes the same on
every run on the same platform.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HEAD_LABELS = {"urgent": "P1", "normal": "P2", "low": "P3"}  # the checkpoints' own names (see label_map)
MODELS = {"priority-l3": "minilm-l3", "priority-l6": "minilm-l6"}
EPOCHS = 2


def build(name: str, builtin: str, out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    sys.path.insert(0, str(ROOT))
    from weightflow.shared.modeling.sources.builtin import materialize_candidate

    rows = [json.loads(line) for line in (HERE / "train.jsonl").read_text().splitlines() if line]
    ids = {label: i for i, label in enumerate(HEAD_LABELS)}
    with tempfile.TemporaryDirectory() as tmp:
        base = materialize_candidate(builtin, Path(tmp) / builtin)
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(
            str(base), num_labels=len(ids), id2label={i: HEAD_LABELS[k] for k, i in ids.items()},
            label2id={HEAD_LABELS[k]: i for k, i in ids.items()}, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    texts = [r["text"] for r in rows]
    targets = torch.tensor([ids[r["label"]] for r in rows])
    head = [*model.bert.pooler.parameters(), *model.classifier.parameters()]
    body = [p for n, p in model.named_parameters()  # the embedding table stays frozen: half the weights, no gain
            if not n.startswith(("bert.pooler", "classifier", "bert.embeddings"))]
    optimizer = torch.optim.AdamW([{"params": body, "lr": 5e-5}, {"params": head, "lr": 2e-3}], weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        for chunk in torch.randperm(len(rows), generator=generator).split(16):
            batch = tokenizer([texts[i] for i in chunk], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            loss = torch.nn.functional.cross_entropy(model(**batch).logits, targets[chunk])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def main(models: Path = HERE / "models") -> list[Path]:
    return [build(name, builtin, models / name) for name, builtin in MODELS.items()]


if __name__ == "__main__":
    for path in main():
        print(path)
