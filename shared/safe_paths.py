"""Resolve a path a user wrote in a requirements file, inside that file's folder and nowhere else.

The *resolved* path is checked, never the string: `../`, absolute paths, a symlink (or a symlinked
folder) pointing out, `/proc/self/environ` — all refused before a byte is read, and the error does not
say anything about what lies outside.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath


class UnsafePathError(ValueError):
    pass


def resolve_inside(base_dir: Path, relative: str, *, kind: str = "file", what: str = "path") -> Path:
    """The real path of `relative` under `base_dir`; `kind` is "file" (regular file) or "dir"."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise UnsafePathError(f"{what} {relative!r} is not a usable path")
    rel = PurePosixPath(relative)
    if rel.is_absolute() or relative.startswith("~") or ".." in rel.parts:
        raise UnsafePathError(f"{what} {relative!r} must be relative to the requirements file and stay in its folder")
    base = Path(base_dir).resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise UnsafePathError(f"{what} {relative!r} leads outside the requirements file's folder (through a symlink); "
                              "copy the file into the folder")
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        raise UnsafePathError(f"{what} {relative!r} does not exist (looked in {base})") from None
    if kind == "file" and not stat.S_ISREG(mode):
        raise UnsafePathError(f"{what} {relative!r} is not a regular file")
    if kind == "dir" and not stat.S_ISDIR(mode):
        raise UnsafePathError(f"{what} {relative!r} is not a directory")
    return target
