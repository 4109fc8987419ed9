"""What every run's page must hold, whatever made the run: used by the end-to-end suites of each kind of
model (encoders, causal LMs, API candidates, a team's own checkpoints) on the run they already made."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from uuid import UUID

from typer.testing import CliRunner

from weightflow.cli import app as cli

from .conftest import LiveStack


class _Visible(HTMLParser):
    """The text the page itself says (scripts, styles and the sample rows' user data left out: a ticket may well
    say "NaN") and the ids and classes of the elements."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.ids: set[str] = set()
        self.classes: set[str] = set()
        self._hidden = 0
        self._tables: list[bool] = []  # the open tables: a sample-rows one or not

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        self.classes.update(str(found.get("class") or "").split())
        if tag == "table":
            self._tables.append("samples" in str(found.get("class") or "").split())
            self._hidden += self._tables[-1]
        if tag in {"script", "style"}:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style"}:
            self._hidden -= 1
        if tag == "table" and self._tables:
            self._hidden -= self._tables.pop()

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)


def assert_run_report(live: LiveStack, run_id: UUID, tmp_path: Path, *, outcome: str = "Deployed: ") -> str:
    """`weightflow report RUN --html` on a run of the real stack: written, offline, every section there, no
    `nan` or traceback where a reader looks, the runbook read from the artifact store; the visible text."""
    out = tmp_path / f"report-{run_id}.html"
    env = {"WEIGHTFLOW_HOME": str(live.settings.home), "WEIGHTFLOW_NATS_URL": str(live.settings.nats_url)}
    result = CliRunner().invoke(cli, ["report", str(run_id), "--html", str(out)], env=env)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", page), "the page opens offline (no CDN)"
    seen = _Visible()
    seen.feed(page)
    text = " ".join(seen.text)
    bad = re.search(r"\bnan\b|\bNaN\b|Traceback|None%", text)
    assert bad is None, text[max(0, bad.start() - 300): bad.end() + 300] if bad else ""
    assert {"candidates-plot", "decision-trail", "outcome"} <= seen.ids, sorted(seen.ids)
    assert "runbook" in seen.classes, "the runbook, read from the artifact store"
    assert outcome in text, text[:3000]
    return text
