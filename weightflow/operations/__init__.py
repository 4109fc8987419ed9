"""What an operator points Prometheus at: a scrape config for a weightflow home, and the shipped alert rules.

Every weightflow process started with `WEIGHTFLOW_OPS_PORT` announces its `/metrics` address as a Prometheus
file-based service discovery target under `<home>/ops/targets/` (shared.ops_server), so the config names
that folder, not ports: processes that come, go or move are picked up without a reload.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from weightflow.shared.ops_server import TARGETS_DIR

RULES = Path(__file__).with_name("alert-rules.yml")
JOB = "weightflow"


def scrape_config(home: Path, *, interval_s: float = 15.0, rules: str | None = RULES.name) -> dict[str, Any]:
    """A prometheus.yml for the processes announced under `home` (job `weightflow`). `honor_labels` keeps a
    metric's own `service` label where the target's says the same."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
        "scrape_configs": [{
            "job_name": JOB,
            "honor_labels": True,
            "file_sd_configs": [{"files": [str(home.resolve() / TARGETS_DIR / "*.json")], "refresh_interval": "30s"}],
        }],
    }
    if rules:
        config["rule_files"] = [rules]
    return config


def write_prometheus_config(out_dir: Path, home: Path, *, interval_s: float = 15.0) -> Path:
    """prometheus.yml and alert-rules.yml in `out_dir`; returns the config's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RULES, out_dir / RULES.name)
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(scrape_config(home, interval_s=interval_s), sort_keys=False))
    return path


def readiness(home: Path, timeout_s: float = 2.0) -> list[tuple[bool, str]]:
    """(ok, line) per process announced under `home`, from its own `/readyz` (what a load balancer or
    supervisor would probe); a process that is gone or does not answer is a finding."""
    import httpx

    from weightflow.shared.ops_server import targets

    out = []
    for target in targets(home):
        if not target.alive:
            out.append((False, f"{target.name} is gone but still announced at {target.address} (a killed process; "
                               "`weightflow up` prunes it on restart)"))
            continue
        try:
            response = httpx.get(f"http://{target.address}/readyz", timeout=timeout_s)
        except httpx.HTTPError as exc:
            out.append((False, f"{target.name} does not answer at {target.address}: {type(exc).__name__}"))
            continue
        if response.status_code == 200:
            out.append((True, f"{target.name} ready ({target.address})"))
            continue
        try:
            body = response.json()
            failing = [f"{name}: {c.get('detail')}" for name, c in body.get("checks", {}).items() if not c.get("ok")]
        except (ValueError, AttributeError):
            failing = []
        why = "; ".join(failing) or f"HTTP {response.status_code}"
        out.append((False, f"{target.name} is not ready at {target.address}: {why}"))
    return out
