"""`weightflow samples RUN`: what the model answered on each evaluated row, from the sample logs its
measurements name (the run's benchmarks, tuning, registration and the canaries of what it registered)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from weightflow.cli.common import Refused, console, err, history, store
from weightflow.client import find_run
from weightflow.contracts.measurement import SampleRow
from weightflow.evaluations import Evaluation, evaluations, read_rows
from weightflow.shared.settings import Settings

SHOWN_CHARS = 80  # the terminal table's cut; the stored log keeps more


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _table(rows: list[SampleRow]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("id", no_wrap=True)
    for name in ("input", "prediction", "target"):
        table.add_column(name, overflow="fold")
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    for r in rows:
        table.add_row(escape(r.id), escape(_cut(r.input)), escape(_cut(r.prediction)), escape(_cut(r.target)),
                      f"{r.score:.3g}", "" if r.latency_ms is None else f"{r.latency_ms:.1f}",
                      style="red" if r.wrong else None)
    return table


def samples(run_id: str = typer.Argument("", metavar="RUN", help="run id (or a prefix); default: the latest run"),
            candidate: str = typer.Option("", "--candidate", help="only this candidate's evaluations (its name, a "
                                          "variant, or candidate/variant)"),
            wrong: bool = typer.Option(False, "--wrong", help="only the rows it got wrong (score below 1)")) -> None:
    """Each evaluation's rows as the model answered them: input, prediction, target, score and latency (where one
    request was timed alone), for the run's benchmarks, tuning, registration and the canaries of its release."""
    from weightflow.pages import run_scope

    settings = Settings()
    events = history(settings)
    found = find_run(events, run_id)
    if isinstance(found, str):
        raise Refused(found)
    picked, without = evaluations(run_scope(events, found)[0])
    if not picked:
        why = (f"its {without} measurement(s) name no sample log: they were taken by a release before sample logs "
               "were kept" if without else "it has measured nothing yet")
        raise Refused(f"run {found} has no sample logs: {why}")
    shown: list[Evaluation] = [e for e in picked if not candidate or e.matches(candidate)]
    if not shown:
        names = sorted({f"{e.candidate}/{e.variant}" for e in picked if e.candidate})
        raise Refused(f"run {found} has no evaluation of {candidate!r}; it evaluated {', '.join(names) or 'none'}")
    read = store(settings).read_bytes
    for evaluation in shown:
        console.print(f"[bold]{escape(evaluation.title)}[/]  [dim]sample log {evaluation.digest[:12]}[/]",
                      highlight=False)
        problem = read_rows(evaluation, read)
        if problem is not None:
            err.print(f"  [yellow]{escape(problem)}[/]", highlight=False)
            continue
        rows = evaluation.wrong() if wrong else evaluation.rows
        if wrong:
            console.print(f"  {len(rows)} of {len(evaluation.rows)} rows wrong", highlight=False)
        if rows:
            console.print(_table(rows))
        console.print()


def register(app: typer.Typer) -> None:
    app.command()(samples)
