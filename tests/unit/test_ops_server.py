"""A process's operator endpoints on a real socket: probes answer with the failing check named, `/metrics`
speaks Prometheus' text format, and announced targets are withdrawn or pruned when their process goes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

import weightflow.shared.metrics  # noqa: F401 - what a weightflow process exports
from weightflow.shared.ops_server import TARGETS_DIR, OpsServer, targets
from weightflow.shared.settings import Settings


def test_probes_name_the_failing_check_and_metrics_are_prometheus_text(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, ops_host="127.0.0.1", ops_port=0)

    def broken() -> tuple[bool, str]:
        raise ConnectionError("database is locked")

    server = OpsServer("tuning", settings.ops_host, settings.ops_port or 0,
                       live={"event_loop": lambda: (True, "ticking")},
                       ready={"nats": lambda: (True, "connected"), "database": broken}).start()
    try:
        base = f"http://{server.host}:{server.port}"
        live = httpx.get(base + "/healthz")
        assert live.status_code == 200 and live.json()["ok"] is True
        ready = httpx.get(base + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == {"ok": False, "detail": "ConnectionError: database is locked"}
        assert ready.json()["checks"]["nats"]["ok"] is True
        metrics = httpx.get(base + "/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert "# TYPE weightflow_events_consumed_total counter" in metrics.text
        missing = httpx.get(base + "/../etc/passwd")
        assert missing.status_code == 404 and "error" in missing.json()
        path = server.announce(settings.home, {"service": "tuning"})
        [target] = targets(settings.home)
        assert target.address == f"127.0.0.1:{server.port}" and target.alive and target.labels["service"] == "tuning"
        assert json.loads(path.read_text())[0]["targets"] == [target.address]
    finally:
        server.stop()
    assert targets(settings.home) == [], "a stopped server withdraws its target"


def test_a_killed_process_target_is_pruned(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    folder = tmp_path / TARGETS_DIR
    folder.mkdir(parents=True)
    (folder / f"benchmark-{pid}.json").write_text(json.dumps(
        [{"targets": ["127.0.0.1:1"], "labels": {"service": "benchmark", "pid": str(pid)}}]))
    (folder / "junk.json").write_text("{not json")
    [stale] = targets(tmp_path)
    assert not stale.alive
    assert targets(tmp_path, prune=True) == []
    assert not (folder / f"benchmark-{pid}.json").exists()
