"""What a new user reads, through the real CLI processes against a real nats-server: `runs` and `status`
show runs only, a rerouted run says where its work went, `dlq ls` is one row per letter (the database's
unannounced ones too), and `doctor` judges free space against what the next step needs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from sqlmodel import Session, select

from weightflow.backlog import read_backlog
from weightflow.client import Client
from weightflow.contracts.base import Event, utcnow
from weightflow.contracts.monitoring import ServingEndpointAnnounced
from weightflow.contracts.registry import RollbackRequested
from weightflow.contracts.workflow import DeadLettered, RequestRefused, WorkflowRerouted
from weightflow.shared.artifacts import ArtifactStore
from weightflow.shared.bus.dead_letters import write_dead_letter
from weightflow.shared.db import OutboxRecord, create_tables, make_engine
from weightflow.shared.natsd import EmbeddedNats
from weightflow.shared.settings import Settings

from ..e2e.test_disk_full import small_filesystem
from ..unit.test_workflow_unit import build_workflow, of

MULTI_LINE_ERROR = ("ValidationError: 2 validation errors for RequirementsSubmitted\ndocument\n  Input should be a "
                    "valid string [type=string_type, input_value=5, input_type=int]\nrun_id\n  Field required")


def cli(home: Path, nats: EmbeddedNats, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WEIGHTFLOW_HOME": str(home), "WEIGHTFLOW_NATS_URL": nats.url,
           "WEIGHTFLOW_NATS_MONITOR_URL": nats.monitor_url, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "weightflow.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def publish(settings: Settings, events: list[Event]) -> None:
    async def go() -> None:
        async with Client(settings) as client:
            for e in events:
                await client.publish(e)

    asyncio.run(go())


def test_runs_and_status_show_runs_only_and_where_a_reroute_went(tmp_path: Path, nats_server: EmbeddedNats,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    workflow = build_workflow(tmp_path / "unit", monkeypatch)
    workflow.scores(a_eval=0.95, b_eval=0.9, a_canary=0.3, b_canary=0.9)
    workflow.submit()
    workflow.runner.publish(RollbackRequested(run_id=uuid4(), deployment="nope"))  # refused: an answer, no run
    workflow.runner.publish(ServingEndpointAnnounced(run_id=uuid4(), deployment="scripted",
                                                     url="http://127.0.0.1:9/"))
    workflow.settle()
    log = workflow.runner.log
    assert of(log, RequestRefused)
    rogue = DeadLettered(run_id=UUID(int=0), service="benchmark", original_subject="wf.requirements.accepted",
                         reason="invalid", error="payload is not JSON", deliveries=1)
    home = tmp_path / "home"
    publish(Settings(home=home, nats_url=nats_server.url), [*log, rogue])

    (reroute,) = of(log, WorkflowRerouted)
    first, second = reroute.run_id, reroute.new_run_id
    listed = cli(home, nats_server, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["run_id"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {str(first), str(second)}, rows
    assert rows[str(first)]["outcome"] == "rerouted" and rows[str(first)]["rerouted_to"] == str(second)
    assert rows[str(second)]["outcome"] == "succeeded"
    text = cli(home, nats_server, "runs").stdout
    assert f"rerouted → {second}" in text and "in progress" not in text and "00000000" not in text, text

    latest = cli(home, nats_server, "status")
    assert f"run {second}: succeeded" in latest.stdout, latest.stdout
    followed = cli(home, nats_server, "status", str(first)[:8])
    assert f"run {first}: rerouted → {second}: succeeded" in followed.stdout, followed.stdout
    refused = of(log, RequestRefused)[0]
    assert cli(home, nats_server, "status", str(refused.run_id)).returncode == 2, "an operator's request is no run"


def test_dlq_ls_is_one_row_per_letter_and_shows_the_databases_own(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, nats_url=nats_server.url)
    letters = [DeadLettered(run_id=uuid4(), service=service, original_subject="wf.requirements.submitted",
                            reason="invalid", error="[bold]x[/] " + MULTI_LINE_ERROR * 3, deliveries=1)
               for service in ("requirements", "benchmark", "registry")]
    publish(settings, list(letters))
    engine = make_engine(settings.resolved_database_url())
    create_tables(engine)  # a dead letter the database holds that no relay published (a full NATS store)
    held = write_dead_letter(engine, ArtifactStore(settings.resolved_artifacts_dir()), "fitting",
                             subject="wf.benchmark.selection_decided", raw=b'{"n": 1}', reason="invalid",
                             error=MULTI_LINE_ERROR, stream_sequence=7, deliveries=1)
    assert held is not None

    for columns in (60, 100, 200):
        listed = cli(home, nats_server, "dlq", "ls", columns=columns)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.rstrip("\n").split("\n")
        assert len(lines) == 1 + len(letters) + 1, (columns, listed.stdout)  # the header, one row per letter
        assert all(len(line) <= columns for line in lines), (columns, listed.stdout)
    wide = cli(home, nats_server, "dlq", "ls", columns=250).stdout
    assert str(held.event_id)[:8] in wide and " db " in wide and "[bold]x[/]" in wide, wide
    shown = cli(home, nats_server, "dlq", "show", str(held.event_id)[:8])
    assert shown.returncode == 0 and json.loads(json.loads(shown.stdout)["payload"]) == {"n": 1}, shown.stdout


def test_the_backlog_reads_only_the_dead_letters_not_yet_on_the_stream(tmp_path: Path) -> None:
    """A published letter is on the stream: its outbox row is not read (every one ever written was, unbounded)."""
    settings = Settings(home=tmp_path / "home")
    engine = make_engine(settings.resolved_database_url())
    create_tables(engine)
    store = ArtifactStore(settings.resolved_artifacts_dir())
    sent, held = (write_dead_letter(engine, store, "fitting", subject="wf.benchmark.selection_decided", raw=b'{"n": 1}',
                                    reason="invalid", error=MULTI_LINE_ERROR, stream_sequence=n, deliveries=1)
                  for n in (1, 2))
    assert sent is not None and held is not None
    with Session(engine) as session:  # the relay published the first
        row = session.exec(select(OutboxRecord).where(OutboxRecord.event_id == str(sent.event_id))).one()
        row.published_at = utcnow()
        session.add(row)
        session.commit()
    assert [letter.event_id for letter in read_backlog(engine).letters] == [held.event_id]


def test_doctor_calls_nothing_ok_that_it_did_not_check(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    """With no monitoring URL the store's health is not read: a `--` note saying so, not `ok`."""
    home = tmp_path / "home"
    create_tables(make_engine(Settings(home=home).resolved_database_url()))
    env = {k: v for k, v in os.environ.items() if k != "WEIGHTFLOW_NATS_MONITOR_URL"}
    env |= {"WEIGHTFLOW_HOME": str(home), "WEIGHTFLOW_NATS_URL": nats_server.url, "COLUMNS": "200"}
    said = subprocess.run([sys.executable, "-m", "weightflow.cli", "doctor"], env=env, capture_output=True, text=True,
                          timeout=120, check=False).stdout
    assert "--   JetStream store health not read: set WEIGHTFLOW_NATS_MONITOR_URL" in said, said
    assert "ok   JetStream store health" not in said and "ok   JetStream storage" in said, said


def stored_artifact(home: Path, size_mb: int) -> None:
    """An object of `size_mb` in the artifact store (doctor reads sizes only)."""
    shard = home / "artifacts" / "objects" / "ab"
    shard.mkdir(parents=True, exist_ok=True)
    with (shard / ("c" * 62)).open("wb") as f:
        f.truncate(size_mb << 20)  # sparse on most filesystems; its size is what counts


def test_doctor_judges_free_space_by_what_the_next_step_needs(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    with small_filesystem(tmp_path / "roomy", 400) as home:
        create_tables(make_engine(Settings(home=home).resolved_database_url()))  # as the services leave it
        stored_artifact(home, 90)  # MiniLM's weights are about this size
        healthy = cli(home, nats_server, "doctor")
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "ok   disk" in healthy.stdout and "ok   JetStream storage" in healthy.stdout, healthy.stdout
    with small_filesystem(tmp_path / "tight", 200) as home:
        create_tables(make_engine(Settings(home=home).resolved_database_url()))
        stored_artifact(home, 90)
        (home / "taken").write_bytes(b"\0" * (100 << 20))  # 100 MiB free; the next step needs 2 x 90 + 64
        tight = cli(home, nats_server, "doctor")
        assert tight.returncode == 1 and "the next step needs about 244 MiB" in tight.stderr, tight.stderr
