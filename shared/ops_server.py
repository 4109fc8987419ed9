"""A process's operator endpoints: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (fit for work).

Served from a thread of its own (the standard library's WSGI server, as prometheus-client's own
`start_http_server` does), so a scrape or a probe answers even while the event loop is busy, and a
blocked loop is exactly what `/healthz` reports. Each check is a callable returning (ok, detail).

A process started with `WEIGHTFLOW_OPS_PORT=0` takes a free port and says where in a Prometheus
file-based service discovery file, `<home>/ops/targets/<name>-<pid>.json`, which Prometheus
(`file_sd_configs`), `weightflow doctor` and the embedded stack read; the file goes when the process does.
A port that was chosen is not announced: whoever chose it configures the scrape (a container's address is
not the loopback its process sees).
"""

from __future__ import annotations

import contextlib
import json
import os
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

Check = Callable[[], tuple[bool, str]]
TARGETS_DIR = Path("ops") / "targets"


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds would flood the log
        pass


def _json(start_response: Callable[..., Any], status: str, body: Mapping[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def run_checks(checks: Mapping[str, Check]) -> tuple[bool, dict[str, Any]]:
    """Every check's answer; a check that raises has failed, with its error as the detail."""
    results: dict[str, Any] = {}
    for name, check in checks.items():
        try:
            ok, detail = check()
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {str(exc)[:200]}"
        results[name] = {"ok": ok, "detail": detail}
    return all(r["ok"] for r in results.values()), results


class OpsServer:
    """`/metrics`, `/healthz` and `/readyz` on host:port (port 0: a free one, see `port`)."""

    def __init__(self, name: str, host: str, port: int, *, live: Mapping[str, Check], ready: Mapping[str, Check],
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.name = name
        self._live, self._ready = live, ready
        self._metrics = make_wsgi_app(registry)
        self._server = make_server(host, port, self._app, server_class=_Server, handler_class=_Quiet)
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"wf-ops-{name}", daemon=True)
        self._target: Path | None = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path in ("/healthz", "/readyz"):
            ok, checks = run_checks(self._live if path == "/healthz" else self._ready)
            return _json(start_response, "200 OK" if ok else "503 Service Unavailable",
                         {"service": self.name, "ok": ok, "checks": checks})
        return _json(start_response, "404 Not Found", {"error": f"no {path[:100]!r}; try /metrics, /healthz, /readyz"})

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def announce(self, home: Path, labels: Mapping[str, str]) -> Path:
        self._target = announce(home, self.name, self.host, self.port, labels)
        return self._target

    def stop(self) -> None:
        if self._target is not None:
            self._target.unlink(missing_ok=True)
            self._target = None
        self._server.shutdown()
        self._server.server_close()


def announce(home: Path, name: str, host: str, port: int, labels: Mapping[str, str]) -> Path:
    """Write a process's Prometheus file_sd target, `<home>/ops/targets/<name>-<pid>.json` (atomically:
    Prometheus may read it at any moment); the caller removes it when the process leaves."""
    folder = home / TARGETS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{os.getpid()}.json"
    address = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    entry = [{"targets": [f"{address}:{port}"], "labels": {**labels, "pid": str(os.getpid())}}]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)
    return path


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Target:
    name: str  # <service>-<pid>
    address: str  # host:port
    labels: dict[str, str]
    alive: bool  # the announcing process still exists


def targets(home: Path, *, prune: bool = False) -> list[Target]:
    """Every process announced under `home`; with `prune`, the files of processes that are gone (a SIGKILL
    leaves its file behind) are removed instead of listed."""
    out = []
    for path in sorted((home / TARGETS_DIR).glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            entry = json.loads(path.read_text())[0]
            labels = {str(k): str(v) for k, v in entry.get("labels", {}).items()}
            alive = _alive(int(labels.get("pid", "0")))
            if prune and not alive:
                path.unlink(missing_ok=True)
                continue
            out.append(Target(path.stem, str(entry["targets"][0]), labels, alive))
    return out
