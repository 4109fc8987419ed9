"""Runs inside the quantization environment (see quant_env.py), never imported by weightflow itself.

    <quant-env>/bin/python -I llmcompressor_worker.py request.json

The request names the checkpoint, the output folder, the method (`rtn`: round-to-nearest W4A16, or
`awq`), the group size, whether groups are symmetric (default: asymmetric, a scale and a zero point per
group, as AWQ's reference and llmcompressor's W4A16_ASYM; on SmolLM2-135M it cut AWQ's KL divergence from
fp32 by a third against symmetric groups, docs/verified.md) and the calibration texts; the result (seconds, peak RSS) is
written next to it. Standalone on purpose: it imports only torch, transformers, datasets and llmcompressor, the
versions pinned in that environment, so the services keep their own transformers.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    started = time.time()
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, out = request["source"], request["out"]
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch.float32,
                                                 trust_remote_code=False)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", strategy="group", group_size=request["group_size"],
        symmetric=request.get("symmetric", False), dynamic=False))}
    if request["method"] == "awq":
        from llmcompressor.modifiers.awq import AWQModifier
        from llmcompressor.pipelines.cache import IntermediatesCache

        if not torch.cuda.is_available():  # its pinned-memory staging needs an accelerator
            IntermediatesCache.pin_memory = lambda self, *a, **k: None
        recipe = AWQModifier(ignore=["lm_head"], config_groups=groups)
    else:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        recipe = QuantizationModifier(ignore=["lm_head"], config_groups=groups)
    texts = request["texts"]
    torch.manual_seed(0)
    oneshot(model=model, tokenizer=tokenizer, recipe=recipe, dataset=Dataset.from_dict({"text": texts}),
            max_seq_length=request.get("max_seq_length", 128), num_calibration_samples=len(texts),
            shuffle_calibration_samples=False)  # the same samples in the same order: the same result
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    result = {"seconds": time.time() - started, "calibration_samples": len(texts),
              "symmetric": request.get("symmetric", False),
              "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    Path(request["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
