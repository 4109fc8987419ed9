"""Settings the README documents that no other test sets: each reaches the code that reads it.

WEIGHTFLOW_SERVE_API_KEY is read by the `weightflow serve` command itself (not by Settings), so it is proven on the
real command; WEIGHTFLOW_QUANT_PYTHON through the 4-bit quantizers that use it to find llmcompressor's environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from weightflow.serving.testing import free_port
from weightflow.shared.modeling.registry import quantizers

from ..conftest import ROOT, wait_served
from .test_refusals import checkpoint, served  # noqa: F401 (fixtures: the tiny checkpoint, registered)

KEY = "wf-serve-key-under-test"


def test_serve_refuses_a_request_without_the_key_from_its_environment(served: tuple[Path, str]) -> None:  # noqa: F811
    home, manifest = served
    port = free_port()
    env = dict(os.environ, WEIGHTFLOW_HOME=str(home), WEIGHTFLOW_NATS_URL="nats://127.0.0.1:1",
               WEIGHTFLOW_SERVE_API_KEY=KEY)
    proc = subprocess.Popen([sys.executable, "-m", "weightflow.cli", "serve", "ticket-router", "--manifest", manifest,
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_served(proc, url)
        body = {"model": "ticket-router", "input": ["I was charged twice"]}
        for headers in ({}, {"authorization": "Bearer not-the-key"}, {"authorization": KEY}):
            refused = httpx.post(f"{url}/v1/classify", json=body, headers=headers, timeout=30)
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.json()["error"]["code"] == "invalid_api_key"
        answered = httpx.post(f"{url}/v1/classify", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
        assert answered.status_code == 200, answered.text
        assert answered.json()["data"][0]["label"]
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200, "health stays open to probes without a key"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


@pytest.mark.parametrize("scheme", ["w4a16", "awq"])
def test_the_4bit_quantizers_find_llmcompressor_where_weightflow_quant_python_points(
        scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quantizer = quantizers.get(scheme)
    monkeypatch.setenv("WEIGHTFLOW_QUANT_PYTHON", str(tmp_path / "no-such-env" / "bin" / "python"))
    said = quantizer.unavailable("cuda")
    assert said is not None and "WEIGHTFLOW_QUANT_PYTHON" in said and "setup-quantization" in said
    monkeypatch.setenv("WEIGHTFLOW_QUANT_PYTHON", sys.executable)  # an interpreter that exists: taken as given
    assert quantizer.unavailable("cuda") is None
    assert quantizer.unavailable("cpu") is not None, "on a cpu 4-bit saves nothing, wherever the environment is"


def test_the_duplicate_window_and_scheduler_tick_are_read_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WEIGHTFLOW_DUPLICATE_WINDOW_S becomes the streams' JetStream duplicate window on a real server (a redelivered
    publish inside it is dropped); WEIGHTFLOW_SCHEDULER_TICK_S is how often monitoring's scheduler runs."""
    import asyncio

    import nats

    from weightflow.services.monitoring.app import service as monitoring
    from weightflow.shared.bus.streams import ensure_streams
    from weightflow.shared.natsd import EmbeddedNats
    from weightflow.shared.settings import Settings

    monkeypatch.setenv("WEIGHTFLOW_DUPLICATE_WINDOW_S", "37")
    monkeypatch.setenv("WEIGHTFLOW_SCHEDULER_TICK_S", "0.75")
    with EmbeddedNats(tmp_path / "nats") as server:
        settings = Settings(home=tmp_path / "home", nats_url=server.url)

        async def windows() -> list[float]:
            nc = await nats.connect(server.url)
            try:
                js = nc.jetstream()
                await ensure_streams(js, settings)
                return [float((await js.stream_info(s.config.name)).config.duplicate_window)
                        for s in await js.streams_info()]
            finally:
                await nc.close()

        assert asyncio.run(windows()) == [37.0, 37.0]
    assert [interval(settings) for interval, _ in monitoring.periodics] == [0.75]
