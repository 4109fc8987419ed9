"""Dead letters: messages a service could not handle, with why; show them and replay them.

The list is the stream's `DeadLettered` events merged with those the database holds and could not publish
yet (a full NATS store): a dead letter is never hidden because its announcement is stuck.
"""

from __future__ import annotations

import json
from uuid import uuid4

import typer

from weightflow.backlog import backlog_of, merge_letters
from weightflow.cli.common import console, err, history, run, store
from weightflow.client import Client
from weightflow.contracts.workflow import DeadLettered
from weightflow.shared.settings import Settings

app = typer.Typer(help="Dead letters: messages a service could not handle.", no_args_is_help=True)


def _letters(settings: Settings) -> list[tuple[DeadLettered, bool]]:
    """Every dead letter once, oldest first, with whether it is on the stream."""
    on_stream = [e for e in history(settings) if isinstance(e, DeadLettered)]
    backlog, why_not = backlog_of(settings)
    if why_not and backlog is None and settings.database_url:
        err.print(f"[yellow]only the stream's dead letters:[/] {why_not}", highlight=False)
    return merge_letters(on_stream, backlog)


def _find(settings: Settings, letter_id: str) -> DeadLettered:
    for e, _ in _letters(settings):
        if str(e.event_id).startswith(letter_id):
            return e
    err.print(f"[red]error:[/] no dead letter {letter_id!r}; see `weightflow dlq ls`")
    raise typer.Exit(2)


def _payload(settings: Settings, letter: DeadLettered) -> bytes:
    """The original bytes: kept in the artifact store's quarantine, or (dropped messages) still in the stream."""
    if letter.payload_digest:
        return store(settings).read_quarantined(letter.payload_digest)
    if letter.stream_sequence is None:
        return b""

    async def fetch(sequence: int) -> bytes:
        async with Client(settings) as client:
            return await client.stored_payload(sequence)

    return run(fetch(letter.stream_sequence))


@app.command("ls")
def dlq_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """Dead letters, oldest first, one row each (`dlq show ID` for the whole error); "db" where the letter is
    in the database but not yet on the stream."""
    letters = _letters(Settings())
    if as_json:
        console.print_json(json.dumps([json.loads(e.model_dump_json(exclude={"payload_preview"})) | {
            "on_stream": on_stream} for e, on_stream in letters]))
        return
    if not letters:
        console.print("no dead letters")
        return
    for line in letter_lines(letters, console.width):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# (header, width) of the fixed columns; "when" is left out of narrow terminals. The rest of the line is the
# subject and the error, cut with "…": one row per letter whatever the width (`dlq show ID` has it all).
COLUMNS = (("id", 8), ("when", 11), ("service", 12), ("reason", 9), ("run", 8), ("on", 6))
NARROW = 100


def _cell(text: str, width: int) -> str:
    text = " ".join(text.split())  # an error's own line breaks would break the row
    return (text if len(text) <= width else text[:max(0, width - 1)] + "…").ljust(width)


def letter_lines(letters: list[tuple[DeadLettered, bool]], width: int) -> list[str]:
    """A header and one line per letter, none longer than `width` (at least 40)."""
    width = max(width, 40)
    columns = [(name, w) for name, w in COLUMNS if name != "when" or width >= NARROW]
    rest = max(1, width - sum(w + 1 for _, w in columns))

    def line(cells: dict[str, str], tail: str) -> str:
        return " ".join([*(_cell(cells[name], w) for name, w in columns), _cell(tail, rest)]).rstrip()

    out = [line({name: name for name, _ in columns}, "subject: error")]
    for e, on_stream in letters:
        cells = {"id": str(e.event_id)[:8], "when": e.occurred_at.strftime("%m-%d %H:%M"), "service": e.service,
                 "reason": e.reason, "run": str(e.run_id)[:8], "on": "stream" if on_stream else "db"}  # id prefixes
        out.append(line(cells, f"{e.original_subject}: {e.error}"))
    return out


@app.command("show")
def dlq_show(letter_id: str) -> None:
    """One dead letter with its error, stream sequence, trace id and original payload."""
    settings = Settings()
    letter = _find(settings, letter_id)
    data = json.loads(letter.model_dump_json())
    data["payload"] = _payload(settings, letter).decode(errors="replace")
    console.print_json(json.dumps(data))


@app.command("replay")
def dlq_replay(letter_id: str) -> None:
    """Publish a dead letter's original payload to its subject again (after fixing the cause)."""
    settings = Settings()
    letter = _find(settings, letter_id)
    payload = _payload(settings, letter)

    async def go() -> None:
        async with Client(settings) as client:
            await client.publish_raw(letter.original_subject, payload, f"replay-{letter.event_id}-{uuid4()}")

    run(go())
    console.print(f"replayed {letter.event_id} to {letter.original_subject}")
