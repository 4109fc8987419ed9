"""Dead letters: messages a service could not handle, with why; show them and replay them."""

from __future__ import annotations

import json
from uuid import uuid4

import typer

from contracts.workflow import DeadLettered
from shared.settings import Settings
from weightflow.cli.common import console, err, history, run, store
from weightflow.client import Client

app = typer.Typer(help="Dead letters: messages a service could not handle.", no_args_is_help=True)


def _letters(settings: Settings) -> list[DeadLettered]:
    return [e for e in history(settings) if isinstance(e, DeadLettered)]


def _find(settings: Settings, letter_id: str) -> DeadLettered:
    for e in _letters(settings):
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
    """Dead letters, oldest first."""
    letters = _letters(Settings())
    if as_json:
        console.print_json(json.dumps([json.loads(e.model_dump_json(exclude={"payload_preview"})) for e in letters]))
        return
    for e in letters:
        console.print(f"{e.event_id}  {e.service:<13} {e.reason:<9} {e.original_subject:<36} run {str(e.run_id)[:8]} "
                      f"{e.error[:80]}", markup=False)


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
