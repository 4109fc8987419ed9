"""A request's validation errors in words a client can act on, each naming its field as the client wrote it.

`messages[0].content: must be a string of at most 16384 characters`, not pydantic's
`messages.0.content.function-after[_unicode(), constrained-str]: String should have at most 16384 characters`.
A field typed as a union (a text or a list of texts) fails once per member, and pydantic names the member in
the location by its internal schema (`function-after[...]`, `list[...]`, `TextPart`): those segments are
dropped; of the members' errors only those of the member the value was meant for are kept (the one it got
past the type check of), and a value that is none of them gets one line saying what it may be.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# What a value must be, by the error pydantic gives when it is something else.
KINDS = {"string_type": "a string", "int_type": "an integer", "int_parsing": "an integer", "float_type": "a number",
         "float_parsing": "a number", "bool_type": "true or false", "list_type": "a list", "dict_type": "an object",
         "model_type": "an object", "model_attributes_type": "an object", "none_required": "null (or left out)"}
MEMBER_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
                "none": "null", "dict": "an object"}
_WRAPPED = re.compile(r"function-[a-z]+\[[^,\]]*, (.+)\]")


def _is_member(segment: object) -> bool:
    """A location segment that names a union member (pydantic's schema of it), never a field of ours: our
    fields are snake_case, members are `str`, `constrained-str`, `list[...]`, `function-after[...]`, a class."""
    return isinstance(segment, str) and bool(segment) and (
        any(c in segment for c in "[]-(),") or segment in MEMBER_KINDS or segment[0].isupper())


def _member(tag: str) -> str:
    """`list[function-after[_unicode(), constrained-str]]` -> "a list of strings"."""
    if wrapped := _WRAPPED.fullmatch(tag):
        return _member(wrapped.group(1))
    if tag.startswith("list[") and tag.endswith("]"):
        inner = _member(tag[5:-1]).split(" ", 1)[-1]  # "a string" -> "string"
        return f"a list of {inner}s" if " " not in inner else f"a list of {inner}"
    base = tag.removeprefix("constrained-")
    return MEMBER_KINDS.get(base, "an object" if tag[:1].isupper() else tag)


def _path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "body"


def _what(error: Mapping[str, Any]) -> str:
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    plural = "" if ctx.get("min_length") == 1 else "s"
    said = {
        "missing": "is required",
        "extra_forbidden": "is not a field of this request; remove it",
        "string_too_long": f"must be a string of at most {ctx.get('max_length')} characters",
        "string_too_short": f"must be a string of at least {ctx.get('min_length')} character{plural}",
        "too_long": f"must have at most {ctx.get('max_length')} items",
        "too_short": f"must have at least {ctx.get('min_length')} item{plural}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be more than {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "enum": f"must be one of {ctx.get('expected')}",
        "string_unicode": "must be valid Unicode text",
        "value_error": str(ctx.get("error") or error.get("msg", "")),
        "json_invalid": f"is not valid JSON ({ctx.get('error', 'cannot be parsed')})",
    }.get(kind)
    if said is not None:
        return said
    if kind in KINDS:
        return f"must be {KINDS[kind]}"
    msg = str(error.get("msg", "is not valid"))
    return msg[:1].lower() + msg[1:]


def problems(errors: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(where, what) for each distinct problem, in the order pydantic found them; `where` is "body" for the
    request as a whole."""
    found: list[tuple[str, str]] = []
    unions: dict[tuple[Any, ...], dict[str, list[tuple[list[Any], Mapping[str, Any]]]]] = {}
    order: list[tuple[str, Any]] = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if loc[:1] == ["body"]:
            loc = loc[1:]
        if error.get("type") == "json_invalid":  # FastAPI: ("body", character offset)
            found.append(("body", f"{_what(error)} at character {loc[0]}" if loc else _what(error)))
            order.append(("plain", len(found) - 1))
            continue
        own = len(loc) - (error.get("type") == "extra_forbidden")  # the last is then the client's own key
        at = next((i for i, part in enumerate(loc[:own]) if _is_member(part)), None)
        clean = [p for i, p in enumerate(loc) if i >= own or not _is_member(p)]
        if at is None:
            found.append((_path(clean), _what(error)))
            order.append(("plain", len(found) - 1))
            continue
        where = tuple(loc[:at])
        if where not in unions:
            unions[where] = {}
            order.append(("union", where))
        unions[where].setdefault(str(loc[at]), []).append((clean, error))
    out: list[tuple[str, str]] = []
    for kind, key in order:
        if kind == "plain":
            out.append(found[key])
            continue
        members = unions[key]
        fitting = [errs for errs in members.values()
                   if not all(len(clean) == len(key) and e.get("type") in KINDS for clean, e in errs)]
        if fitting:
            out += [(_path(clean), _what(e)) for errs in fitting for clean, e in errs]
        else:
            out.append((_path(list(key)), "must be " + " or ".join(_member(tag) for tag in members)))
    return list(dict.fromkeys(out))
