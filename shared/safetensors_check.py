"""Decide what a user-supplied file is by its bytes, and refuse anything that could run code.

Model checkpoints are the classic attack surface of ML platforms: pickle-based formats
(``torch.save`` zips, ``.bin``/``.pt``/``.pkl``) execute arbitrary code when loaded, and
MLflow's CVE history shows that file extensions cannot be trusted. weightflow therefore accepts
exactly three kinds of content, judged by content only:

* ``safetensors`` -- the header is parsed strictly (bounded memory, no tensor is loaded) and
  every tensor must tile the data section exactly, so a file cannot smuggle extra bytes;
* ``json`` -- a UTF-8 JSON object or array without duplicate keys;
* ``text`` -- UTF-8 without NUL bytes that is not a (protocol 0/1) pickle in disguise.

Everything else -- pickles, zips, other binaries -- raises :class:`UnsafeArtifactError` whose
message says what was found and how to convert it.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickletools
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_TEXT_BYTES",
    "ArtifactKind",
    "UnsafeArtifactError",
    "sniff_kind",
    "strict_json_loads",
    "validate_safetensors",
]

ArtifactKind = Literal["safetensors", "json", "text"]


class UnsafeArtifactError(ValueError):
    """The content is not an accepted artifact kind (or is malformed); the message says how to fix it."""


# Bytes per element of every byte-aligned dtype safetensors defines. Sub-byte types (F4, F6_*)
# are left out: nothing in weightflow produces them and their sizes are not whole bytes.
_ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1, "C64": 8,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1,
}  # fmt: skip
ALLOWED_DTYPES: frozenset[str] = frozenset(_ITEMSIZE)
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit safetensors itself enforces
MAX_TEXT_BYTES = 256 * 1024 * 1024  # JSON/text is read whole to check it; big data belongs in safetensors

_TENSOR_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
_SAVE_HINT = "re-save the tensors with safetensors.torch.save_file"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json_loads(text: str | bytes) -> Any:
    """``json.loads`` that rejects duplicate keys (ambiguous documents) and NaN/Infinity.

    Raises ``ValueError`` (duplicates: a private subclass) or ``RecursionError`` on bad input.
    """
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tensor(name: str, entry: object, data_len: int) -> tuple[int, int]:
    """Check one header entry and return its (begin, end) offsets; raise ValueError with the reason."""
    if not isinstance(entry, dict) or set(entry) != _TENSOR_FIELDS:
        raise ValueError(f"tensor {name!r} must be an object with exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise ValueError(f"tensor {name!r} has dtype {dtype!r}; allowed: {sorted(ALLOWED_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"tensor {name!r} shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise ValueError(f"tensor {name!r} data_offsets {offsets!r} is not [begin, end] with begin <= end")
    begin, end = offsets
    expected = math.prod(shape) * _ITEMSIZE[dtype]
    if end - begin != expected:
        raise ValueError(f"tensor {name!r} covers {end - begin} bytes but {dtype}{shape} needs {expected}")
    if end > data_len:
        raise ValueError(f"tensor {name!r} ends at byte {end}, past the {data_len}-byte data section")
    return begin, end


def validate_safetensors(
    path: Path, *, max_header_bytes: int = MAX_HEADER_BYTES
) -> dict[str, dict[str, Any]]:
    """Parse a safetensors header strictly without loading tensors.

    Returns ``{tensor_name: {"dtype", "shape", "data_offsets"}}`` (``__metadata__`` left out).
    The header length is checked against the limit and the file size *before* the header is
    read, so a forged length cannot make us allocate.
    """

    def bad(reason: str) -> UnsafeArtifactError:
        return UnsafeArtifactError(f"{path}: not a valid safetensors file: {reason}; {_SAVE_HINT}")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise bad(f"file is {size} bytes, shorter than the 8-byte header length")
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > max_header_bytes:
            raise bad(f"header length {header_len} exceeds the limit of {max_header_bytes} bytes")
        if header_len > size - 8:
            raise bad(f"header length {header_len} is larger than the {size - 8} bytes after it")
        raw = f.read(header_len)
    if len(raw) != header_len:
        raise bad("file shrank while reading the header")
    try:
        header = strict_json_loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError, duplicates
        raise bad(f"header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map strings to strings")

    data_len = size - 8 - header_len
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        try:
            begin, end = _check_tensor(name, entry, data_len)
        except ValueError as exc:
            raise bad(str(exc)) from None
        spans.append((begin, end, name))

    # The tensors must tile the data section exactly: no overlap, no gap, nothing after the end.
    covered = 0
    for begin, end, name in sorted(spans):
        if begin < covered:
            raise bad(f"tensor {name!r} overlaps the previous tensor (starts at {begin} < {covered})")
        if begin > covered:
            raise bad(f"unreferenced gap of {begin - covered} bytes before tensor {name!r}")
        covered = end
    if covered != data_len:
        raise bad(f"{data_len - covered} trailing bytes after the last tensor are not referenced")
    return dict(header)


class _Discard(io.StringIO):
    def write(self, s: str) -> int:
        return len(s)


def _is_pickle(data: bytes) -> bool:
    """True if ``data`` starts with a well-formed pickle (static disassembly; nothing is executed)."""
    try:
        pickletools.dis(data, out=_Discard())
    except Exception:  # any disassembly error means "not a pickle"
        return False
    return True


def sniff_kind(path: Path) -> ArtifactKind:
    """Classify ``path`` by content as safetensors, JSON or text; refuse everything else."""
    with open(path, "rb") as f:
        head = f.read(16)
        size = os.fstat(f.fileno()).st_size

    st_error: UnsafeArtifactError | None = None
    if size >= 8:
        try:
            validate_safetensors(path)
            return "safetensors"
        except UnsafeArtifactError as exc:
            st_error = exc

    if head.startswith(_ZIP_MAGICS):
        raise UnsafeArtifactError(
            f"{path} is a zip archive (torch.save .pt/.bin checkpoints are zips holding pickles, which run "
            f"code when loaded); load it once in a trusted sandbox and convert it with "
            f"safetensors.torch.save_file"
        )
    pickle_msg = (
        f"{path} is a pickle file (pickles run arbitrary code when loaded); convert it to safetensors "
        f"with safetensors.torch.save_file, or to JSON if it is not tensor data"
    )
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise UnsafeArtifactError(pickle_msg)
    if size > MAX_TEXT_BYTES:
        raise st_error or UnsafeArtifactError(
            f"{path} is {size} bytes and not safetensors; JSON/text is limited to {MAX_TEXT_BYTES} bytes, "
            f"store large data as safetensors (safetensors.torch.save_file)"
        )

    data = Path(path).read_bytes()
    if _is_pickle(data):
        raise UnsafeArtifactError(pickle_msg)
    if st_error is not None and data[8:9] == b"{":  # meant to be safetensors: report why it is not
        raise st_error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\x00"
    if "\x00" in text:
        raise UnsafeArtifactError(
            f"{path} is binary data that is neither safetensors nor UTF-8 JSON/text; only those are "
            f"accepted -- save tensors with safetensors.torch.save_file"
        )
    try:
        parsed = strict_json_loads(text)
    except _DuplicateKeyError as exc:
        raise UnsafeArtifactError(f"{path} is ambiguous JSON ({exc}); remove the duplicate key") from None
    except (ValueError, RecursionError):
        return "text"
    return "json" if isinstance(parsed, dict | list) else "text"
