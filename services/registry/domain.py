"""Registry decisions, pure: may a manifest go live, where does a rollback go, and the runbook text.

* A new manifest is promoted unless its requirements version is older than the live one's or than the
  newest accepted version (a late run must not undo a change).
* A rollback goes to the release before the live one in the promotion history (not a toggle), or to a
  named manifest of the same deployment; rolling back to older requirements is allowed but said.
* After a failed canary the deployment goes back automatically to the newest earlier release that
  passed its canary under the current requirements version, while the reroute looks for a better one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from weightflow.contracts.registry import Manifest


@dataclass(frozen=True)
class Refused:
    reason: str


@dataclass(frozen=True)
class Target:
    manifest_id: str
    position: int


def promotable(version: int, live_version: int | None, latest_accepted: int) -> str | None:
    """None when a manifest of requirements `version` may go live, else why not."""
    newest = max(live_version or 0, latest_accepted)
    if version < newest:
        return (f"it was registered under requirements v{version}, but v{newest} is newer; "
                "`weightflow rollback --to` promotes it deliberately")
    return None


def rollback_target(deployment: str, releases: list[str], position: int, to: str | None,
                    owner: Callable[[str], str | None]) -> Target | Refused:
    """`owner(manifest)` is the deployment a manifest was registered for (None: not registered)."""
    if position < 0:
        return Refused(f"deployment {deployment!r} has never been promoted")
    if to is None:
        if position == 0:
            return Refused(f"{deployment!r} is on its first release ({releases[0][:12]}); there is nothing before it")
        return Target(releases[position - 1], position - 1)
    belongs = owner(to)
    if belongs is None:
        return Refused(f"manifest {to[:12]} is not registered; see `weightflow registry ls`")
    if belongs != deployment:
        return Refused(f"manifest {to[:12]} belongs to deployment {belongs!r}, not {deployment!r}")
    if to == releases[position]:
        return Refused(f"manifest {to[:12]} is already live on {deployment!r}")
    if to in releases:
        return Target(to, len(releases) - 1 - releases[::-1].index(to))
    return Refused(f"manifest {to[:12]} was registered for {deployment!r} but never promoted; it has no place in "
                   "the release history to go back to")


def last_good(releases: list[str], position: int, good: Callable[[str], bool]) -> Target | None:
    """The newest release before the live one that `good` accepts."""
    for i in range(position - 1, -1, -1):
        if releases[i] != releases[position] and good(releases[i]):
            return Target(releases[i], i)
    return None


def _example_request(manifest: Manifest) -> str:
    """A curl line for the route the deployment's task serves first."""
    from weightflow.shared.modeling.registry import tasks

    serves = tasks.get(manifest.requirements.task.type).serves
    example: dict[str, object] = {"model": manifest.deployment}
    if "completions" in serves:
        route, example["messages"] = "chat/completions", [{"role": "user", "content": "an example input"}]
    elif serves & {"classify", "embeddings"}:
        route, example["input"] = ("classify" if "classify" in serves else "embeddings"), "an example input"
    else:
        return "# this task serves no HTTP route"
    return f"curl -s localhost:8000/v1/{route} -H 'content-type: application/json' -d '{json.dumps(example)}'"


def _local_load_and_serve(manifest: Manifest, manifest_id: str) -> str:
    return f"""## 1. Load
Every file below is verified against its sha256 before it is loaded; a mismatch refuses to load.

```bash
weightflow registry verify {manifest_id}
```

```python
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.stored import load_deployment, read_manifest
store = ArtifactStore(".weightflow/artifacts")
model = load_deployment(store, read_manifest(store, "{manifest_id}"))
```

## 2. Serve
```bash
weightflow serve {manifest.deployment} --port 8000   # HTTP, OpenAI-compatible; swaps on promotion and rollback
{_example_request(manifest)}
weightflow predict {manifest.deployment} "an example input"   # one-off, loaded in the CLI process
```
`weightflow serve {manifest.deployment} --manifest {manifest_id[:12]}…` (the full id) serves exactly this
release and does not follow the registry. With `WEIGHTFLOW_SERVE_API_KEY` set, clients send
`Authorization: Bearer <key>`. `/readyz` answers 200 once the verified model is loaded.
With `weightflow serve` running, the canary probes it over HTTP (what clients see).
"""


def _api_load_and_serve(manifest: Manifest, manifest_id: str) -> str:
    """A hosted API: nothing to load; the endpoint card pins where and how it is called."""
    from weightflow.shared.modeling.registry import tasks

    ref = manifest.requirements.candidate(manifest.candidate)
    api = ref.api if ref is not None else None
    if api is None:
        return "## 1. Load\nThe requirements in this manifest do not name the API candidate; re-register it.\n"
    task = tasks.get(manifest.requirements.task.type)
    route = task.remote_route(manifest.requirements.task, api.route)
    path = {"chat": "chat/completions"}.get(route, route)
    auth = f' -H "Authorization: Bearer ${api.api_key_env}"' if api.api_key_env else ""
    example: dict[str, object] = {"model": api.model}
    if route == "chat":
        example["messages"] = [{"role": "user", "content": "an example input"}]
    elif route == "completions":
        example["prompt"] = "an example input"
    else:
        example["input"] = "an example input"
    prompt = task.prompt_template(manifest.requirements.task, route)
    return f"""## 1. Load
Nothing is loaded here: this deployment is the hosted model **{api.model}** at `{api.url}`, called on
`/{path}`{f" with the key in `${api.api_key_env}` (its value is never stored)" if api.api_key_env else ""}.
The endpoint card (`model/endpoint.json` below) pins URL, model id, route, prices and limits; verify it:

```bash
weightflow registry verify {manifest_id}
```

```python
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.registry import sources
from weightflow.shared.modeling.stored import read_manifest
store = ArtifactStore(".weightflow/artifacts")
endpoint = sources.get("api").endpoint(store, read_manifest(store, "{manifest_id}").model.tree_digest)
```

## 2. Serve
Clients call the provider directly (prices: ${api.price_per_1k_input_tokens:g} / ${api.price_per_1k_output_tokens:g}
per 1k input / output tokens){f"; requests are built from the prompt template {json.dumps(prompt)}" if prompt else ""}:
```bash
curl -s {api.url}/{path}{auth} -H 'content-type: application/json' -d '{json.dumps(example)}'
```
The canary probes this endpoint with the canary set (an endpoint that does not answer is a canary failure
of kind `unreachable`).
"""


def _load_and_serve(manifest: Manifest, manifest_id: str) -> str:
    from weightflow.shared.modeling.stored import is_remote

    render = _api_load_and_serve if is_remote(manifest.source) else _local_load_and_serve
    return render(manifest, manifest_id)


def _what(manifest: Manifest, adapter: str) -> str:
    from weightflow.shared.modeling.stored import is_remote

    if is_remote(manifest.source):
        return f"{manifest.candidate}, a hosted model behind an OpenAI-compatible API (nothing quantized, no adapter)"
    return (f"{manifest.candidate} ({manifest.source}, {manifest.params:,} params), variant\n**{manifest.variant}** "
            f"({manifest.quantization or 'unquantized'}), {adapter}, {manifest.sharding}")


def _where(manifest: Manifest) -> str:
    from weightflow.shared.modeling.stored import is_remote

    if is_remote(manifest.source):
        return "Latency and cost are what a client of the API sees (cost from token usage x prices)."
    hw = manifest.requirements.deployment.hardware
    return (f"Memory budget {manifest.budget.total_bytes / 2**20:.1f} MB of\n{hw.memory_mb:g} MB on `{hw.profile}` "
            f"({hw.device}).")


def render_runbook(manifest: Manifest, manifest_id: str) -> str:
    req = manifest.requirements
    m = manifest.measurement
    c = manifest.canary_baseline
    rows = "\n".join(f"| `{role}` | `{digest}` |" for role, digest in sorted(manifest.checksums().items()))
    adapter = (f"LoRA adapter `{manifest.adapter.tree_digest[:12]}` "
               f"trained on data `{(manifest.adapter_train_data_digest or '')[:12]}`"
               if manifest.adapter else "no adapter")
    previous = f"`{manifest.previous_manifest_id}`" if manifest.previous_manifest_id else "none (first release)"
    interval = f" [{c.interval.low:.3f}, {c.interval.high:.3f}]" if c.interval else ""
    return f"""# Runbook: {manifest.deployment}

Manifest `{manifest_id}` — {_what(manifest, adapter)}.
Task `{req.task.type}`. Registered {manifest.created_at} by run `{manifest.run_id}` against requirements
v{manifest.requirements_version} (`{manifest.requirements_digest[:12]}`).

Measured at registration: {req.quality.metric} {m.score:.3f} on the eval set (threshold {req.quality.threshold:.3f}),
{c.score:.3f}{interval} on the canary set (the canary's baseline); latency p50/p95
{m.latency_ms_p50:.1f}/{m.latency_ms_p95:.1f} ms (ceiling {req.latency.p95_ms:g}), ${m.cost_per_1k_usd:.4f} per 1k
tasks (ceiling ${req.cost.per_1k_tasks_usd:g}). {_where(manifest)}

{_load_and_serve(manifest, manifest_id)}
The live deployment is watched by a canary every {req.monitoring.canary_interval_s:g} s
(`weightflow canary {manifest.deployment}` runs one now).

## 3. Roll back
Previous manifest: {previous}.
```bash
weightflow rollback {manifest.deployment}              # the release before the live one
weightflow rollback {manifest.deployment} --to MANIFEST  # a named release of this deployment
```
A failed canary rolls back by itself to the newest earlier release that passed its canary under the same
requirements version.

## Pinned files
| role | sha256 |
|---|---|
{rows}
"""
