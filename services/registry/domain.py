"""Build the manifest that pins a deployment, and the runbook anyone can follow to stand it up again."""

from __future__ import annotations

from contracts.registry import Manifest


def render_runbook(manifest: Manifest, manifest_id: str) -> str:
    req = manifest.requirements
    hw = req.deployment.hardware
    m = manifest.measurement
    rows = "\n".join(f"| `{role}` | `{digest}` |" for role, digest in sorted(manifest.checksums().items()))
    adapter = (f"LoRA adapter `{manifest.adapter.tree_digest[:12]}` "
               f"trained on data `{(manifest.adapter_train_data_digest or '')[:12]}`"
               if manifest.adapter else "no adapter")
    previous = f"`{manifest.previous_manifest_id}`" if manifest.previous_manifest_id else "none (first release)"
    return f"""# Runbook: {manifest.deployment}

Manifest `{manifest_id}` — {manifest.candidate} ({manifest.params:,} params), variant **{manifest.variant}**
({manifest.quantization or "unquantized"}), {adapter}, {manifest.sharding}.
Registered {manifest.created_at} by run `{manifest.run_id}` against requirements v{manifest.requirements_version}
(`{manifest.requirements_digest[:12]}`).

Measured at registration: score {m.score:.3f} (threshold {req.quality.threshold:.3f}), latency p50/p95
{m.latency_ms_p50:.1f}/{m.latency_ms_p95:.1f} ms (ceiling {req.latency.p95_ms:g}), ${m.cost_per_1k_usd:.4f} per 1k
tasks (ceiling ${req.cost.per_1k_tasks_usd:g}). Memory budget {manifest.budget.total_bytes / 2**20:.1f} MB of
{hw.memory_mb:g} MB on `{hw.profile}` ({hw.device}).

## 1. Load
Every file below is verified against its sha256 before it is loaded; a mismatch refuses to load.

```bash
weightflow registry verify {manifest_id}
```

```python
from shared.artifacts import ArtifactStore
from shared.serving import load_deployment, read_manifest
store = ArtifactStore(".weightflow/artifacts")
encoder = load_deployment(store, read_manifest(store, "{manifest_id}"))
```

## 2. Serve
```bash
weightflow predict {manifest.deployment} "my parcel never arrived"
```
Labels: {", ".join(f"`{k}`" for k in req.task.labels)}. The live deployment is watched by a canary every
{req.monitoring.canary_interval_s:g} s (`weightflow canary {manifest.deployment}` runs one now).

## 3. Roll back
Previous manifest: {previous}.
```bash
weightflow rollback {manifest.deployment}
```
This promotes the previously live manifest; the canary then watches it.

## Pinned files
| role | sha256 |
|---|---|
{rows}
"""
