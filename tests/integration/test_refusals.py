"""Refusals of user input through the real CLI, and `weightflow serve` against slow clients and bad bodies.

Whatever a user gets wrong (a symlink or a special file anywhere in a `path:` checkpoint, a folder or a
missing folder where a file goes, a WEIGHTFLOW_* setting of the wrong type, an OTLP protocol no exporter
speaks, a wait of zero seconds, an impossible port, a host that is not this machine's, a port in use) is exit 2
with the line that says what to fix, never a traceback (issue 19). `serve` closes a client that stalls in its
headers or its body, or idles on keep-alive, within its deadline, and names the field of a bad body in words.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from weightflow.client import Client
from weightflow.contracts.limits import MAX_TEXT_CHARS
from weightflow.serving.live import LiveDeployment
from weightflow.serving.server import MAX_HEAD_BYTES, ClientTimeouts
from weightflow.serving.testing import ServerThread, free_port, register_checkpoint
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.natsd import EmbeddedNats
from weightflow.shared.settings import Settings
from weightflow.submission import prepare

from ..conftest import EXAMPLE_DIR, ROOT, wait_served
from .test_hostile_input import example, replace

SECRET = "wf-refusal-secret-that-must-not-leak"


def cli(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """The real `weightflow` in a subprocess; its exit code and everything it said, on one line."""
    full = dict(os.environ, COLUMNS="250", WF_TEST_SECRET=SECRET, **env)  # wide: typer's error box does not wrap
    proc = subprocess.run([sys.executable, "-m", "weightflow.cli", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=timeout, check=False)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def assert_refused(code: int, said: str, expected: str) -> None:
    assert code == 2, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert expected in said, said[-3000:]


# -- a `path:` checkpoint with something weightflow will not store, anywhere in it ---------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.plugins.scripted import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny")


def shard_linked_outside(model: Path, outside: Path) -> None:
    (model / "model.safetensors").rename(outside / "model.safetensors")
    (model / "model.safetensors").symlink_to(outside / "model.safetensors")


def shard_linked_inside(model: Path, outside: Path) -> None:
    (model / "model.safetensors").rename(model.parent / "weights.safetensors")  # still in the team's folder
    (model / "model.safetensors").symlink_to(model.parent / "weights.safetensors")


def folder_linked(model: Path, outside: Path) -> None:
    (model / "extra").symlink_to(outside)


def config_linked_to_environ(model: Path, outside: Path) -> None:
    (model / "config.json").unlink()
    (model / "config.json").symlink_to("/proc/self/environ")


def a_fifo(model: Path, outside: Path) -> None:
    os.mkfifo(model / "pipe")


def odd_name(model: Path, outside: Path) -> None:
    (model / "notes v2.txt").write_text("x")


CHECKPOINTS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "symlinked shard": (shard_linked_outside, "model.safetensors is a symlink; copy the model with links resolved"),
    "shard linked inside the folder": (shard_linked_inside, "model.safetensors is a symlink; copy the model"),
    "symlinked subfolder": (folder_linked, "tiny/extra is a symlink; copy the model with links resolved"),
    "config.json -> /proc/self/environ": (config_linked_to_environ, "config.json is a symlink"),
    "a FIFO": (a_fifo, "tiny/pipe is not a regular file"),
    "a name the store refuses": (odd_name, "file name 'notes v2.txt' in"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_checkpoint_with_a_link_or_special_file_is_refused_before_anything_is_read_or_stored(
        case: str, checkpoint: Path, tmp_path: Path) -> None:
    make, expected = CHECKPOINTS[case]
    folder = example(tmp_path)
    model = folder / "models" / "tiny"
    shutil.copytree(checkpoint, model)
    outside = tmp_path / "outside"
    outside.mkdir()
    make(model, outside)
    replace(folder, "candidates: [minilm-l3, minilm-l6]", "candidates: [{path: models/tiny}]")
    home = tmp_path / "home"
    code, said = cli(["submit", str(folder / "requirements.yaml")],
                     {"WEIGHTFLOW_HOME": str(home), "HF_HUB_CACHE": str(tmp_path / "hf"),
                      "WEIGHTFLOW_NATS_URL": "nats://127.0.0.1:1"})  # nothing may be published: no server
    assert_refused(code, said, expected)
    assert "candidates.0 (tiny)" in said and SECRET not in said
    stored = [p for p in (home / "artifacts" / "objects").rglob("*") if p.is_file()] if home.exists() else []
    assert not stored, "nothing is stored before everything is valid"


# -- paths, settings and options of the other commands ----------------------------------------------------
@pytest.fixture(scope="module")
def bus_with_a_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server whose stream holds one submitted run (for `report`); its URL."""
    base = tmp_path_factory.mktemp("bus")
    with EmbeddedNats(base / "nats") as server:
        settings = Settings(home=base / "home", nats_url=server.url, trace_file=False)
        event = prepare(EXAMPLE_DIR / "requirements.yaml", ArtifactStore(settings.resolved_artifacts_dir())).event

        async def publish() -> None:
            async with Client(settings) as client:
                await client.publish(event)

        asyncio.run(publish())
        yield server.url


OPTIONS: dict[str, tuple[list[str], dict[str, str], str]] = {
    "report into a missing folder": (["report", "--out", "{tmp}/missing/report.md"], {},
                                     "{tmp}/missing/report.md: no such file or folder"),
    "report onto a folder": (["report", "--out", "{tmp}"], {}, "{tmp}: is a folder; name a file"),
    "WEIGHTFLOW_HOME is a file": (["registry", "show", "a" * 64], {"WEIGHTFLOW_HOME": "{tmp}/afile"},
                                  "a part of the path is a file, not a folder (the data folder is WEIGHTFLOW_HOME="),
    "a setting of the wrong type": (["runs"], {"WEIGHTFLOW_ACK_WAIT_S": "soon"},
                                    "WEIGHTFLOW_ACK_WAIT_S='soon': Input should be a valid number"),
    "more artifact copies than a cluster has": (["runs"], {"WEIGHTFLOW_ARTIFACT_REPLICAS": "9"},
                                                "WEIGHTFLOW_ARTIFACT_REPLICAS='9': Input should be less than or equal"),
    "requirements that are a folder": (["submit", "{tmp}"], {}, "is a folder; name the requirements YAML file"),
    "rollback that waits 0 s": (["rollback", "x", "--timeout", "0"], {},
                                "Invalid value for '--timeout': must be a number of seconds above 0"),
    "canary that waits -1 s": (["canary", "x", "--timeout", "-1"], {}, "must be a number of seconds above 0"),
    "resume that waits forever": (["resume", "x", "--timeout", "inf"], {}, "must be a number of seconds above 0"),
    "up with no services": (["up", "--replicas", "0"], {}, "Invalid value for '--replicas'"),
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_bad_paths_settings_and_options_are_one_line_and_exit_2(case: str, bus_with_a_run: str,
                                                                tmp_path: Path) -> None:
    args, env, expected = OPTIONS[case]
    (tmp_path / "afile").write_text("not a folder\n")

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path))

    code, said = cli([fill(a) for a in args], {"WEIGHTFLOW_HOME": str(tmp_path / "home"),
                                                "WEIGHTFLOW_NATS_URL": bus_with_a_run,
                                                **{k: fill(v) for k, v in env.items()}})
    assert_refused(code, said, fill(expected))


@pytest.mark.parametrize("nats_url", ["", "nats://127.0.0.1:1"])
def test_no_reachable_bus_is_one_line_and_exit_3(nats_url: str, tmp_path: Path) -> None:
    code, said = cli(["runs"], {"WEIGHTFLOW_HOME": str(tmp_path / "home"), "WEIGHTFLOW_NATS_URL": nats_url})
    assert code == 3 and "Traceback" not in said, said[-3000:]
    assert ("cannot reach NATS at nats://127.0.0.1:1" if nats_url else "no NATS server: set WEIGHTFLOW_NATS_URL") \
        in said, said


# -- `weightflow serve`: its address and its options, refused before the model loads ---------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> tuple[Path, str]:
    """(home, manifest id) of the tiny checkpoint registered as deployment `ticket-router`."""
    base = tmp_path_factory.mktemp("served")
    folder = example(base)
    shutil.copytree(checkpoint, folder / "models" / "tiny")
    replace(folder, "candidates: [minilm-l3, minilm-l6]", "candidates: [{path: models/tiny}]")
    home = base / "home"
    return home, register_checkpoint(ArtifactStore(Settings(home=home).resolved_artifacts_dir()),
                                     folder / "requirements.yaml")


OTLP_JSON = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
OTLP_REFUSED = "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not supported: use one of http/protobuf, grpc"

SERVE: dict[str, tuple[list[str], dict[str, str], str]] = {
    "port 180005": (["--port", "180005"], {}, "Invalid value for '--port': 180005 is not in the range 1<=x<=65535"),
    "port 0": (["--port", "0"], {}, "Invalid value for '--port': 0 is not in the range"),
    "port -1": (["--port", "-1"], {}, "Invalid value for '--port': -1 is not in the range"),
    "a host no resolver knows": (["--host", "nowhere.invalid"], {}, "--host 'nowhere.invalid' is not an address of "
                                                                  "this machine; use 127.0.0.1, 0.0.0.0"),
    "another machine's address": (["--host", "192.0.2.1"], {}, "--host '192.0.2.1' is not an address of this"),
    "a port in use": (["--port", "{busy}"], {}, "port {busy} on 127.0.0.1 is in use by another process; choose "
                                                "another --port"),
    "a public URL with no scheme": (["--public-url", "localhost:8000"], {},
                                    "Invalid value for '--public-url': must be an http:// or https:// URL"),
    "a body timeout of 0": (["--body-timeout", "0"], {}, "Invalid value for '--body-timeout': must be a number of"),
    "a header timeout setting of 0": ([], {"WEIGHTFLOW_SERVE_HEADER_TIMEOUT_S": "0"},
                                      "WEIGHTFLOW_SERVE_HEADER_TIMEOUT_S='0': Input should be greater than 0"),
    "a body timeout setting of infinity": ([], {"WEIGHTFLOW_SERVE_BODY_TIMEOUT_S": "inf"},
                                           "WEIGHTFLOW_SERVE_BODY_TIMEOUT_S='inf': Input should be a finite number"),
    "a keep-alive setting of 0": ([], {"WEIGHTFLOW_SERVE_KEEP_ALIVE_S": "0"},
                                  "WEIGHTFLOW_SERVE_KEEP_ALIVE_S='0': Input should be greater than or equal to 1"),
    "an OTLP protocol no exporter speaks": ([], OTLP_JSON, OTLP_REFUSED),
}


@pytest.mark.parametrize("case", list(SERVE))
def test_serve_refuses_an_address_or_option_it_cannot_use_before_loading_the_model(
        case: str, served: tuple[Path, str]) -> None:
    home, manifest = served
    args, env, expected = SERVE[case]
    with socket.socket() as busy:  # a port another process listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        args = [a.replace("{busy}", port) for a in args]
        started = time.monotonic()
        code, said = cli(["serve", "ticket-router", "--manifest", manifest, "--port", str(free_port()), *args],
                         {"WEIGHTFLOW_HOME": str(home), "WEIGHTFLOW_NATS_URL": "nats://127.0.0.1:1", **env},
                         timeout=90)  # before the fix, port 180005 hung after "Application startup complete"
    assert_refused(code, said, expected.replace("{busy}", port))
    assert "Application startup" not in said, "refused before the model loads and the app starts"
    assert time.monotonic() - started < 60


def test_a_service_refuses_an_otlp_protocol_no_exporter_speaks(tmp_path: Path) -> None:
    code, said = cli(["service", "benchmark"], {"WEIGHTFLOW_HOME": str(tmp_path / "home"),
                                                "WEIGHTFLOW_NATS_URL": "nats://127.0.0.1:1", **OTLP_JSON}, timeout=90)
    assert_refused(code, said, OTLP_REFUSED)


def test_serve_closes_a_stalled_client_after_its_header_timeout(served: tuple[Path, str]) -> None:
    """The deadlines reach the real command: --header-timeout 1 closes a half-sent request in about 1 s."""
    home, manifest = served
    port = free_port()
    env = dict(os.environ, WEIGHTFLOW_HOME=str(home), WEIGHTFLOW_NATS_URL="nats://127.0.0.1:1")
    proc = subprocess.Popen([sys.executable, "-m", "weightflow.cli", "serve", "ticket-router", "--manifest", manifest,
                             "--port", str(port), "--header-timeout", "1", "--keep-alive-timeout", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_served(proc, f"http://127.0.0.1:{port}")
        took, answer = stalled(port, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-")
        assert 0.7 < took < 4 and answer.startswith(b"HTTP/1.1 408 "), (took, answer)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


# -- slow clients, on a real server on loopback ---------------------------------------------------------
class Idle(LiveDeployment):
    """No model: what these tests look at is answered (or refused) before a model is needed."""

    async def start(self) -> None:
        return None


TIMEOUTS = ClientTimeouts(header_s=1.0, body_s=1.0, keep_alive_s=1)


def idle(tmp_path_factory: pytest.TempPathFactory, timeouts: ClientTimeouts) -> Iterator[ServerThread]:
    settings = Settings(home=tmp_path_factory.mktemp("idle") / "home", trace_file=False)
    server = ServerThread(settings, "ticket-router", "0" * 64, timeouts=timeouts)
    server.live = Idle(settings, "ticket-router")
    with server:
        yield server


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    yield from idle(tmp_path_factory, TIMEOUTS)


@pytest.fixture(scope="module")
def patient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A 10 s header deadline: what is refused at once is told apart from what waits for it on any machine."""
    yield from idle(tmp_path_factory, ClientTimeouts(header_s=10.0))


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def until_closed(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent."""
    started, said = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            said += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return time.monotonic() - started, said


def stalled(port: int, sent: bytes) -> tuple[float, bytes]:
    sock = connect(port)
    sock.sendall(sent)
    return until_closed(sock)


def body_of(answer: bytes) -> dict[str, object]:
    return dict(json.loads(answer.split(b"\r\n\r\n", 1)[1]))


def test_half_sent_headers_are_answered_408_and_closed_at_the_header_timeout(idle_server: ServerThread) -> None:
    took, answer = stalled(idle_server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: ")
    assert 0.7 < took < 3.5, took
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer
    assert "headers did not arrive within 1 s" in str(body_of(answer)["error"])


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(idle_server: ServerThread) -> None:
    took, answer = until_closed(connect(idle_server.port))
    assert 0.7 < took < 3.5 and answer == b"", (took, answer)


def test_trickled_headers_do_not_extend_the_deadline(idle_server: ServerThread) -> None:
    sock = connect(idle_server.port)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    with pytest.raises(OSError):  # the server closes while the client still trickles
        for _ in range(40):
            sock.sendall(b"a")
            time.sleep(0.1)
    took = time.monotonic() - started
    assert 0.7 < took < 3.5, took
    sock.close()


def test_a_body_short_of_its_content_length_is_answered_408_at_the_body_timeout(idle_server: ServerThread) -> None:
    took, answer = stalled(idle_server.port, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\ncontent-type: application/json"
                                             b"\r\ncontent-length: 1000\r\n\r\n0123456789")
    assert 0.7 < took < 3.5, took
    assert answer.startswith(b"HTTP/1.1 408 ")
    error = body_of(answer)["error"]
    assert isinstance(error, dict) and error["code"] == "request_timeout"
    assert error["message"] == "the request's body did not arrive within 1 s"


def test_an_idle_keep_alive_connection_is_closed(idle_server: ServerThread) -> None:
    sock = connect(idle_server.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    took, answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in answer  # kept alive, then closed
    assert 0.7 < took < 3.5, took


def test_a_head_over_the_cap_is_refused_before_its_deadline(patient_server: ServerThread) -> None:
    """The parser keeps every header line it is sent: a head still incomplete past the cap is refused at once
    (a 431, or a reset when the server closes on bytes it did not read), not held until the deadline."""
    sock = connect(patient_server.port)
    started = time.monotonic()
    with contextlib.suppress(OSError):  # closed while the head was still coming
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES * 4))
    _, answer = until_closed(sock)
    took = time.monotonic() - started
    assert took < 3.0, f"refused after {took:.2f} s: held toward the 10 s header deadline"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_fifty_stalled_connections_are_all_closed_by_their_deadlines(idle_server: ServerThread) -> None:
    stalls = [b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"POST /v1/embeddings HTTP/1.1\r\ncontent-length: 900\r\n\r\n{",
              b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"]
    socks = [connect(idle_server.port) for _ in range(50)]
    for i, sock in enumerate(socks):
        sock.sendall(stalls[i % len(stalls)])
    started = time.monotonic()
    for sock in socks:
        until_closed(sock)
    assert time.monotonic() - started < 4.5
    r = httpx.get(idle_server.url + "/healthz", timeout=10)  # and the server still answers
    assert r.status_code == 200


# -- validation errors name the field in words ----------------------------------------------------------
BAD_BODIES: list[tuple[str, object, str, str | None]] = [
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x" * (MAX_TEXT_CHARS + 1)}]},
     f"messages[0].content: must be a string of at most {MAX_TEXT_CHARS} characters", "messages[0].content"),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text: must be a string", "messages[0].content[0].text"),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": 5}]},
     "messages[0].content: must be a string or a list of objects", "messages[0].content"),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
     "messages[0].role: must be one of 'system', 'user', 'assistant' or 'developer'", "messages[0].role"),
    ("/v1/completions", {"model": "m", "prompt": 42}, "prompt: must be a string or a list of strings", "prompt"),
    ("/v1/completions", {"model": "m", "prompt": ["fine", 7]}, "prompt[1]: must be a string", "prompt[1]"),
    ("/v1/completions", {"model": "m", "prompt": "x", "stop": ["a"] * 5}, "stop: must have at most 4 items", "stop"),
    ("/v1/completions", {"model": "m", "prompt": "x", "temperature": "hot"}, "temperature: must be a number",
     "temperature"),
    ("/v1/embeddings", {"model": "m", "input": "x", "encoding_format": "hex"},
     "encoding_format: must be one of 'float' or 'base64'", "encoding_format"),
    ("/v1/embeddings", {"model": "m", "input": "x", "colour": "red"},
     "colour: is not a field of this request; remove it", "colour"),
    ("/v1/classify", {"model": "m", "input": []}, "input: must have at least 1 item", "input"),
    ("/v1/classify", {"input": "x"}, "model: is required", "model"),
    ("/v1/classify", [1, 2], "body: must be an object", None),
]


@pytest.mark.parametrize(("path", "body", "expected", "param"), BAD_BODIES)
def test_a_bad_body_is_400_naming_the_field_in_words(idle_server: ServerThread, path: str, body: object,
                                                     expected: str, param: str | None) -> None:
    r = httpx.post(idle_server.url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["message"] == expected and error["param"] == param, error
    assert not any(internal in error["message"] for internal in ("function-", "constrained", "list[", "Input should"))


def test_malformed_json_says_where(idle_server: ServerThread) -> None:
    r = httpx.post(idle_server.url + "/v1/classify", content=b'{"model": "m", "input": ',
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("body: is not valid JSON (") and "at character" in r.text
