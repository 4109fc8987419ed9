"""Refusals of user input through the real CLI, and `weightflow serve` against slow clients and bad bodies.

Whatever a user gets wrong (a symlink or a special file anywhere in a `path:` checkpoint, a folder or a
missing folder where a file goes, a WEIGHTFLOW_* setting of the wrong type, a wait of zero seconds, an
impossible port, a host that is not this machine's, a port in use) is exit 2 with the line that says what
to fix, never a traceback (issue 19). `serve` closes a client that stalls in its headers or its body, or
idles on keep-alive, within its deadline, and names the field of a bad body in words.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.artifacts import ArtifactStore
from shared.natsd import EmbeddedNats
from shared.settings import Settings
from weightflow.client import Client
from weightflow.submission import prepare

from .conftest import EXAMPLE_DIR, ROOT
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
    "requirements that are a folder": (["submit", "{tmp}"], {}, "is a folder; name the requirements YAML file"),
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
