"""The causal-LM tasks' model work: loading with the right padding, prompts through the chat template,
log-likelihoods of continuations, the loss on target tokens only, general ability, and served completions
(streamed a piece at a time)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.loading import load_checkpoint, load_tokenizer
from weightflow.shared.modeling.protocols import (
    Completion,
    CompletionParams,
    GeneralOutputs,
    LoadedModel,
    TaskRuntime,
    TextSink,
)
from weightflow.shared.modeling.tasks.language import (
    GREEDY_BELOW,
    MAX_PROMPT_TOKENS,
    LanguageTask,
    mean_of_rows,
    per_token_likelihood,
    render_prompt,
)


class LanguageRuntime(TaskRuntime):
    task: LanguageTask

    def chat_prompt(self, loaded: LoadedModel, spec: TaskSpec, messages: Sequence[dict[str, str]]
                    ) -> tuple[str, bool]:
        """One user message is the task's input, rendered exactly as it was evaluated; a longer
        conversation needs the tokenizer's chat template."""
        if len(messages) == 1 and messages[0]["role"] == "user":
            return self.prompt(loaded, spec, messages[0]["content"]), spec.chat_template
        if not getattr(loaded.tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template: send one user message (it is rendered "
                             "with the task's prompt) or use /v1/completions with your own prompt")
        rendered: str = loaded.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                                             tokenize=False)
        return rendered, True

    def complete(self, loaded: LoadedModel, spec: TaskSpec, prompts: Sequence[str], params: CompletionParams, *,
                 templated: bool = False, on_text: TextSink | None = None) -> list[Completion]:
        tokenizer = loaded.tokenizer
        tokenizer.padding_side = "left"
        batch = tokenizer(list(prompts), padding=True, return_tensors="pt", add_special_tokens=not templated)
        batch = {k: v.to(loaded.device) for k, v in batch.items()}
        decoding: dict[str, Any] = {"do_sample": False}
        if params.temperature >= GREEDY_BELOW:  # lower temperatures overflow the logits: they mean greedy
            decoding = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        if params.seed is not None:
            torch.manual_seed(params.seed)
        if on_text is not None:
            decoding["streamer"] = TextPieces(tokenizer, len(prompts), params.stop, on_text)
        with torch.inference_mode():
            out = loaded.model.generate(**batch, max_new_tokens=params.max_tokens, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id, **decoding)
        new = out[:, batch["input_ids"].shape[1]:].cpu().tolist()
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        completions = []
        for ids, n_prompt in zip(new, prompt_tokens, strict=True):
            ended = tokenizer.eos_token_id in ids
            produced = ids[: ids.index(tokenizer.eos_token_id) + 1] if ended else ids
            text = tokenizer.decode(produced, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, ended = text[:cut], True
            completions.append(Completion(text, int(n_prompt), len(produced), "stop" if ended else "length"))
        return completions

    def load(self, model_dir: Path, device: Any) -> LoadedModel:
        tokenizer = load_tokenizer(model_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return LoadedModel(load_checkpoint(model_dir, "AutoModelForCausalLM", device), tokenizer, device, self.name,
                           Path(model_dir))

    def prompt(self, loaded: LoadedModel, spec: TaskSpec, text: str) -> str:
        body = render_prompt(spec, text)
        if spec.chat_template and getattr(loaded.tokenizer, "chat_template", None):
            rendered: str = loaded.tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], add_generation_prompt=True, tokenize=False)
            return rendered
        return body

    def encode(self, loaded: LoadedModel, texts: Sequence[str], *, side: str, add_special: bool = True
               ) -> dict[str, torch.Tensor]:
        loaded.tokenizer.padding_side = side
        batch = loaded.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_PROMPT_TOKENS * 2,
                                 return_tensors="pt", add_special_tokens=add_special)
        return {k: v.to(loaded.device) for k, v in batch.items()}

    def continuation_logprobs(self, loaded: LoadedModel, prompts: Sequence[str], continuations: Sequence[str],
                              *, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of log p(continuation token | everything before), number of continuation tokens) per pair."""
        prompt_ids = [loaded.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        cont_ids = [loaded.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        sequences = [(p + c)[-MAX_PROMPT_TOKENS * 2:] for p, c in zip(prompt_ids, cont_ids, strict=True)]
        width = max(len(s) for s in sequences)
        pad = loaded.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        target = torch.zeros((len(sequences), width), dtype=torch.bool)
        for i, (seq, cont) in enumerate(zip(sequences, cont_ids, strict=True)):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            target[i, len(seq) - min(len(cont), len(seq) - 1): len(seq)] = True
        ids, mask, target = ids.to(loaded.device), mask.to(loaded.device), target.to(loaded.device)
        # Logits only where a continuation token is predicted: position j predicts token j + 1. For
        # multiple choice that is a few positions, not the whole prompt (8 x 256 x 49k fp32 logits were
        # 384 MiB, and a log_softmax as large again: more than a 4-bit SmolLM2's weights).
        first = int(target.float().argmax(dim=1).min()) - 1  # every row has at least one target token
        kept = torch.arange(max(first, 0), width - 1, device=ids.device)
        with torch.set_grad_enabled(grad):
            if keeps_logits(loaded.model):
                logits = loaded.model(input_ids=ids, attention_mask=mask, logits_to_keep=kept).logits.float()
            else:
                logits = loaded.model(input_ids=ids, attention_mask=mask).logits[:, kept].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, kept + 1].unsqueeze(-1)).squeeze(-1)
        chosen = target[:, kept + 1]
        return (logprobs * chosen).sum(dim=1), chosen.sum(dim=1)

    def general_score(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> float:
        return self.general_outputs(loaded, spec, rows).score

    def general_outputs(self, loaded: LoadedModel, spec: TaskSpec, rows: Sequence[Any]) -> GeneralOutputs:
        """Accuracy on a set of multiple-choice questions (a 0/1 hit per question), else −ln(perplexity) on the
        plain texts: (log-likelihood, tokens) per text, the score their ratio of sums (a long text weighs more)."""
        texts = [r for r in rows if r.text is not None]
        questions = [r for r in rows if r.text is None]
        if questions and not texts:
            hits = [float(self._choose(loaded, spec, r.input, r.choices) == r.label) for r in questions]
            return GeneralOutputs(np.asarray(hits, dtype=float), mean_of_rows)
        per_text: list[tuple[float, float]] = []
        for i in range(0, len(texts), self.task.batch_size):
            chunk = texts[i: i + self.task.batch_size]
            bos = loaded.tokenizer.bos_token or ""
            sums, counts = self.continuation_logprobs(loaded, [bos] * len(chunk), [r.text for r in chunk])
            per_text += [(float(s), float(c)) for s, c in zip(sums.tolist(), counts.tolist(), strict=True)]
        return GeneralOutputs(np.asarray(per_text, dtype=float).reshape(-1, 2), per_token_likelihood)

    def _choose(self, loaded: LoadedModel, spec: TaskSpec, text: str, choices: Sequence[str]) -> int:
        prompt = self.prompt(loaded, spec, text)
        sums, counts = self.continuation_logprobs(loaded, [prompt] * len(choices), [f" {c}" for c in choices])
        scores = sums / counts.clamp(min=1) if spec.length_normalise else sums
        return int(scores.argmax())

    def target_loss(self, loaded: LoadedModel, prompts: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
        """Mean negative log-likelihood of the target tokens only: the prompt is context, not a lesson."""
        eos = loaded.tokenizer.eos_token or ""
        sums, counts = self.continuation_logprobs(loaded, prompts, [f"{t}{eos}" for t in targets], grad=True)
        return -(sums.sum() / counts.sum().clamp(min=1))


class TextPieces:
    """A transformers streamer for a batch: each row's new text, as it is generated, handed to `sink`.

    transformers' own TextIteratorStreamer takes one sequence; a served batch has several. Text is held
    back while it could still be the start of a stop string or an unfinished UTF-8 character, and a row
    ends at its end-of-sequence token or stop string, so every piece is a prefix of the final answer.
    """

    def __init__(self, tokenizer: Any, rows: int, stops: Sequence[str], sink: TextSink) -> None:
        self.tokenizer, self.stops, self.sink = tokenizer, tuple(stops), sink
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [0] * rows
        self.done = [False] * rows
        self.prompt_seen = False
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        column = value.reshape(-1).tolist() if hasattr(value, "reshape") else list(value)
        for i, token in enumerate(column):
            if self.done[i]:
                continue
            if token == self.tokenizer.eos_token_id:
                self.done[i] = True
                continue
            self.ids[i].append(int(token))
            text = self.tokenizer.decode(self.ids[i], skip_special_tokens=True)
            cut = min((j for j in (text.find(s) for s in self.stops) if j >= 0), default=-1)
            if cut >= 0:
                text, self.done[i], ready = text[:cut], True, cut
            elif text.endswith("\ufffd"):
                continue
            else:
                ready = len(text) - self.hold
            if ready > self.sent[i]:
                self.sink(i, text[self.sent[i]:ready])
                self.sent[i] = ready

    def end(self) -> None:
        """Nothing to flush: the caller sends what the final answer holds beyond the pieces."""


def keeps_logits(model: Any) -> bool:
    """Whether a causal LM's forward takes transformers' `logits_to_keep` (projects only those positions
    onto the vocabulary); a peft wrapper is asked about the model it wraps."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters
