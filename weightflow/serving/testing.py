"""For tests and benchmarks of serving: a checkpoint registered by hand, and the server in a thread.

`register_checkpoint` stores a real manifest (content-addressed, every file pinned and verified on load)
without running the workflow; its measurements are placeholders, since what serving tests and benches
look at is the HTTP layer over real weights. `ServerThread` is `weightflow serve --manifest` on a free port,
with the same slow-client deadlines.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import uvicorn

from weightflow.contracts.measurement import Measurement
from weightflow.contracts.registry import Manifest, ManifestEntry
from weightflow.contracts.requirements import DataRefs
from weightflow.contracts.requirements_doc import parse_requirements
from weightflow.serving.app import create_app
from weightflow.serving.live import LiveDeployment
from weightflow.serving.server import ClientTimeouts, server_config
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.modeling.registry import sources
from weightflow.shared.modeling.stored import budget_for
from weightflow.shared.settings import Settings
from weightflow.submission import prepare


def register_checkpoint(store: ArtifactStore, doc: Path, candidate: int = 0) -> str:
    """The manifest id of the doc's `candidate`, unquantized, as the registry would pin it."""
    prepared = prepare(doc, store)
    event = prepared.event
    req = parse_requirements(event.document)
    ref = (req.candidates or [])[candidate]
    source = sources.get(ref.source)
    resolved = source.resolve(ref, doc.parent, store)
    tree = source.tree(resolved, store)
    entry = ManifestEntry(tree_digest=tree, files=store.tree_files(tree))
    placeholder = Measurement(score=1.0, latency_ms_p50=1.0, latency_ms_p95=1.0, cost_per_1k_usd=0.0,
                              throughput_per_s=1.0, n=1)
    manifest = Manifest(
        deployment=req.deployment.name, run_id=str(uuid4()), created_at=datetime.now(UTC).isoformat(),
        requirements_digest=store.put_bytes(event.document.encode()), requirements_version=1, requirements=req,
        data=DataRefs(**event.data), candidate=resolved.key, source=ref.source, params=resolved.params, base=entry,
        variant="fp32", quantization=None, model=entry, measurement=placeholder, canary_baseline=placeholder,
        budget=budget_for(store, tree, resolved.params, "fp32", req))
    return store.put_bytes(manifest.model_dump_json(indent=2).encode(), suffix_hint=".json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """`weightflow serve --manifest` in a thread: a real uvicorn on a real port."""

    def __init__(self, settings: Settings, deployment: str, manifest_id: str, *,
                 timeouts: ClientTimeouts | None = None, **app_options: Any) -> None:
        self.live = LiveDeployment(settings, deployment, pinned=manifest_id)
        self.timeouts = timeouts or ClientTimeouts()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.options = app_options
        self.server: uvicorn.Server | None = None
        self.app: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._error: BaseException | None = None

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            await self.live.start()
            self.app = create_app(self.live, **self.options)
            self.server = uvicorn.Server(server_config(self.app, host="127.0.0.1", port=self.port,
                                                       timeouts=self.timeouts, log_level="warning"))
            await self.server.serve()
        except BaseException as exc:
            self._error = exc
            raise

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 120
        while not (self.server is not None and self.server.started):
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start within 120 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self._thread.join(timeout=30)
