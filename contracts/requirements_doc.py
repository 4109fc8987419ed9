"""The requirements document: YAML text -> `Requirements`, bounded, with every error and its field path.

Every error is collected (not just the first) and phrased as what to fix, because the person reading it
is editing a YAML file, not debugging a service. The text is bounded before it is parsed (size, nesting,
values after aliases), so no document can exhaust memory or time.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from pydantic import ValidationError

from weightflow.contracts.limits import MAX_DOCUMENT_BYTES, MAX_DOCUMENT_DEPTH, MAX_DOCUMENT_NODES
from weightflow.contracts.requirements import Requirements

EXAMPLE_HINT = "see examples/support-tickets/requirements.yaml"


class RequirementsError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(document)"


def _check_shape(data: Any) -> None:
    """Depth and size of the loaded document, walked iteratively with aliases expanded (a YAML bomb
    shares nodes, so its expanded size is what validation would walk)."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_DOCUMENT_NODES:
            raise RequirementsError([f"the document expands to more than {MAX_DOCUMENT_NODES} values "
                                     "(YAML aliases?); write it out plainly"])
        if depth > MAX_DOCUMENT_DEPTH:
            raise RequirementsError([f"the document nests deeper than {MAX_DOCUMENT_DEPTH} levels"])
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            stack.extend((k, depth + 1) for k in node)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def decode_document(raw: bytes) -> str:
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise RequirementsError([f"the document is {len(raw)} bytes, over the {MAX_DOCUMENT_BYTES}-byte cap; "
                                 "a requirements file is one page"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequirementsError([f"the document is not UTF-8 text (byte {exc.start}); save it as UTF-8"]) from None


def parse_requirements(text: str) -> Requirements:
    """YAML text -> Requirements, or RequirementsError listing every problem with its field path."""
    if len(text.encode("utf-8", errors="replace")) > MAX_DOCUMENT_BYTES:
        raise RequirementsError([f"the document is over the {MAX_DOCUMENT_BYTES}-byte cap; a requirements file "
                                 "is one page"])
    if "\x00" in text:
        raise RequirementsError(["the document contains NUL bytes; it is not a text file"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RequirementsError([f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    except RecursionError:
        raise RequirementsError([f"the document nests deeper than {MAX_DOCUMENT_DEPTH} levels"]) from None
    if not isinstance(data, dict):
        raise RequirementsError(["the document must be a YAML mapping (name:, task:, data:, quality:, …)"])
    _check_shape(data)
    try:
        return Requirements.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = f"unknown field (check the spelling; {EXAMPLE_HINT})"
            errors.append(f"{_location(err['loc'])}: {message}")
        raise RequirementsError(errors) from None


def requirements_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
