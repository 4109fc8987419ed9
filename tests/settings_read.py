"""The environment variables weightflow reads, found in its code rather than kept in a list by hand.

`shared.settings.Settings` reads `WEIGHTFLOW_<FIELD>` for each of its fields; a few variables are read directly
(`os.environ`, `os.getenv`), always named by a whole string literal in the code: `WEIGHTFLOW_*`, and the
OpenTelemetry variables that weightflow interprets itself (`OTEL_*`). A setting a deployment file sets that is in
neither is one nothing reads: a typo, or a setting that was removed.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from weightflow.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CODE = ("contracts", "shared", "services", "weightflow")
NAME = re.compile(r"(?:WEIGHTFLOW|OTEL)_[A-Z0-9_]+")


@cache
def settings_weightflow_reads() -> frozenset[str]:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names = {f"{prefix}{field}".upper() for field in Settings.model_fields}
    for folder in CODE:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME.fullmatch(node.value):
                    names.add(node.value)
    return frozenset(names)
