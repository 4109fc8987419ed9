"""One delivery pipeline (shared/bus/delivery.py) for both runners, and a bus that knows no domain event.

The rules are run here through the in-process runner; tests/integration/test_bus.py runs the same rules through
the NATS runtime on a real nats-server (retries, exhaustion, dead letters, orphans, shutdown).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from pathlib import Path
from uuid import uuid4

import pytest
from sqlmodel import Field, Session, SQLModel, select

from weightflow.contracts.base import Event, register
from weightflow.contracts.topology import Stage
from weightflow.contracts.workflow import DeadLettered
from weightflow.shared.bus import HandlerContext, HandlerResult, OrphanError, PermanentError, Service
from weightflow.shared.bus.inprocess import InProcessRunner
from weightflow.shared.db import DeadLetterRecord
from weightflow.shared.settings import Settings

from ..conftest import ROOT

BUS = ROOT / "shared" / "bus"


@register
class Knock(Event):
    STAGE = "unitbus"
    NAME = "knock"
    n: int


@register
class Answer(Event):
    STAGE = "unitbus"
    NAME = "answer"
    n: int


class Knocked(SQLModel, table=True):
    __tablename__ = "unit_knocked"
    id: int | None = Field(default=None, primary_key=True)
    n: int


def runner(tmp_path: Path, handler: Callable[[Knock, HandlerContext], HandlerResult], *,
           requires_run: bool = False) -> InProcessRunner:
    svc = Service("door", declared=Stage(0, "door", "test", consumes=(Knock,), emits=(Answer,)))
    svc.handles(Knock, requires_run=requires_run)(handler)
    return InProcessRunner([svc], Settings(home=tmp_path / "home", trace_file=False, max_deliver=3,
                                           database_url=f"sqlite:///{tmp_path / 'wf.db'}"))


def answered(event: Knock) -> HandlerResult:
    def commit(session: Session) -> Sequence[Event]:
        session.add(Knocked(n=event.n))
        return [Answer.follow(event, n=event.n)]

    return commit


def letters(run: InProcessRunner) -> list[DeadLetterRecord]:
    with Session(run.engine) as session:
        return list(session.exec(select(DeadLetterRecord)).all())


def test_a_failing_handler_is_delivered_again_and_its_effect_counts_once(tmp_path: Path) -> None:
    seen: list[int] = []

    def flaky(event: Knock, ctx: HandlerContext) -> HandlerResult:
        seen.append(ctx.delivery.deliveries)
        if len(seen) < 3:
            raise RuntimeError("the database is locked")
        return answered(event)

    run = runner(tmp_path, flaky)
    run.publish(Knock(run_id=uuid4(), n=1))
    events = run.run_until_idle()
    assert seen == [1, 2, 3], "redelivered within the budget, each delivery counted"
    assert [type(e) for e in events] == [Knock, Answer] and not letters(run)
    with Session(run.engine) as session:
        assert [k.n for k in session.exec(select(Knocked)).all()] == [1]


@pytest.mark.parametrize(("error", "reason", "tries"), [
    (RuntimeError("always"), "exhausted", 3),  # the budget (max_deliver 3) spent
    (PermanentError("this input can never be handled"), "permanent", 1),  # at once
])
def test_what_cannot_be_handled_is_dead_lettered_with_its_reason(tmp_path: Path, error: Exception, reason: str,
                                                                 tries: int) -> None:
    calls: list[int] = []

    def broken(event: Knock, ctx: HandlerContext) -> HandlerResult:
        calls.append(ctx.delivery.deliveries)
        raise error

    run = runner(tmp_path, broken)
    run.publish(Knock(run_id=uuid4(), n=2))
    events = run.run_until_idle()
    assert len(calls) == tries and [type(e) for e in events] == [Knock, DeadLettered], "announced, not answered"
    [letter] = letters(run)
    assert letter.reason == reason and letter.deliveries == tries and str(error) in letter.error


def test_an_event_of_a_run_nobody_accepted_is_an_orphan(tmp_path: Path) -> None:
    def never(event: Knock, ctx: HandlerContext) -> HandlerResult:
        raise AssertionError("an orphan never reaches its handler")

    run = runner(tmp_path, never, requires_run=True)
    run.publish(Knock(run_id=uuid4(), n=3))
    run.run_until_idle()
    [letter] = letters(run)
    assert letter.reason == OrphanError.reason and "is not a run the requirements service accepted" in letter.error


def module_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import at any depth of `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_the_bus_has_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in BUS.glob("*.py"):
        deps = set()
        for module, names in module_imports(path):
            if module == "weightflow.shared.bus":
                deps |= {n for n in names if (BUS / f"{n}.py").exists()} | {"__init__"}
            elif module.startswith("weightflow.shared.bus."):
                deps |= {module.split(".")[3], "__init__"}  # a submodule's import runs the package first
        graph[path.stem] = deps - {path.stem}

    def cycle_from(node: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for dep in sorted(graph.get(node, ())):
            if dep in path:
                return (*path[path.index(dep):], dep)
            if (found := cycle_from(dep, (*path, dep))) is not None:
                return found
        return None

    cycles = [c for name in graph if (c := cycle_from(name, (name,)))]
    assert not cycles, cycles


def test_the_bus_knows_no_domain_event() -> None:
    """The bus may read the envelope (contracts.base, limits), the declared topology (who consumes what), the run
    registry's record and the dead-letter event it publishes itself; what a stage's event means is the stages'
    business."""
    allowed = {"weightflow.contracts.base": None, "weightflow.contracts.limits": None,
               "weightflow.contracts": {"topology"},
               "weightflow.contracts.workflow": {"RunRecord", "DeadLettered"}}
    found = []
    for path in BUS.glob("*.py"):
        for module, names in module_imports(path):
            if module.startswith(("weightflow.contracts", "weightflow.services")):
                permitted = allowed.get(module, set())
                if module not in allowed or (permitted is not None and not set(names) <= permitted):
                    found.append(f"{path.name}: {module} {names}")
    assert not found, found


def test_both_runners_deliver_through_the_one_pipeline() -> None:
    """Neither runner checks runs, retries or dead-letters on its own: each calls `deliver` and settles what it
    returns."""
    for name in ("runtime.py", "inprocess.py"):
        imported = dict(module_imports(BUS / name))
        assert "deliver" in imported.get("weightflow.shared.bus.delivery", []), name
        source = (BUS / name).read_text()
        assert "check_run(" not in source and "except PermanentError" not in source, name


def test_only_the_event_that_starts_a_run_registers_it() -> None:
    """The bus and the NATS grants ask the event type, not its name: overriding `run_registration` is the one
    place that says an event registers runs."""
    from weightflow.contracts import EVENT_TYPES
    from weightflow.contracts.requirements import RequirementsAccepted

    assert [t for t in EVENT_TYPES.values() if t.registers_runs()] == [RequirementsAccepted]


def test_shutdown_does_not_wait_forever_for_a_task_that_ignores_its_cancellation(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    """A background task stuck past its cancellation (seen once in a hundred SIGTERMs right after start) left a
    service process waiting in shutdown forever; now shutdown waits TASKS_STOP_S, names the task and the process
    leaves without it."""
    import asyncio

    from weightflow.shared.bus import lifecycle

    monkeypatch.setattr(lifecycle, "TASKS_STOP_S", 0.2)
    life = lifecycle.Lifecycle("door", Settings(home=tmp_path / "home", trace_file=False, shutdown_grace_s=0.1))

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)  # ignores the first cancellation; the loop's own cleanup ends it

    async def scenario() -> float:
        life.start_task(stubborn())
        await asyncio.sleep(0)
        started = asyncio.get_running_loop().time()
        await life.on_shutdown()
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(scenario()) < 2.0 and life._abandoned
