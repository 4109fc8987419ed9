"""Content-addressed artifact store: the only way model files enter and leave weightflow.

Why it looks like this (MLflow's CVE history is mostly path traversal and unpickling):

* Objects are named by their sha256 and nothing else, so a caller-supplied name can never
  become a path: ``path_of`` accepts exactly 64 lowercase hex characters and checks that the
  resolved path stays inside ``root/objects``.
* Content is sniffed before it is stored (:func:`shared.safetensors_check.sniff_kind`): only
  safetensors and UTF-8 JSON/text get in, never pickles or zips, whatever the file is called.
* Writes are atomic (temp file in ``root/tmp`` on the same filesystem, fsync, ``os.replace``,
  fsync of the directory), so a crash leaves either the old state or the new one.
* Every read re-hashes, so a tampered or bit-rotted object raises :class:`IntegrityError`;
  putting the good file again replaces the corrupt copy.

A model directory is stored as a *tree*: each file is an object, plus a JSON index
``{"kind": "weightflow.tree/v1", "files": {name: digest}}`` whose digest names the tree. ``materialize_tree`` rebuilds a
plain directory from it (hard links when possible) for libraries that want a path. Objects are
made read-only, but a hard-linked materialized file shares its inode with the object: writing
into it in place corrupts the object too, which the next verification detects.

Where services share no disk, the store is given a :class:`RemoteObjects` (a JetStream Object Store bucket,
``shared.nats_objects``) and its own directory becomes a cache of it (:func:`open_store` picks by settings): every
put is written through to the bucket before it returns, so an event never names an artifact another host cannot
fetch; a read that misses the cache streams the object from the bucket into ``root/tmp``, checks its sha256 against
the name and sniffs it like any input, then moves it into place, after which it is read (and verified) as before.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from weightflow.shared.safetensors_check import UnsafeArtifactError, sniff_kind, strict_json_loads

if TYPE_CHECKING:
    from weightflow.shared.settings import Settings

__all__ = [
    "TREE_KIND",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "IntegrityError",
    "RemoteObjects",
    "UnsafeArtifactError",
    "is_digest",
    "open_store",
    "sha256_file",
    "tree_entries",
]

TREE_KIND = "weightflow.tree/v1"
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_TREE_FILES = 512
MAX_TREE_DEPTH = 4


def _tree_name_ok(name: str) -> bool:
    parts = name.split("/")
    return 0 < len(parts) <= MAX_TREE_DEPTH and all(_NAME_RE.fullmatch(p) for p in parts)


_SUFFIX_RE = re.compile(r"\.[A-Za-z0-9]{1,16}")
_CHUNK = 1 << 20


class IntegrityError(RuntimeError):
    """A stored object's content no longer matches its digest."""


class ArtifactNotFoundError(FileNotFoundError):
    """No object with that digest is in the store."""


def sha256_file(path: Path, chunk_size: int = _CHUNK) -> str:
    """Stream ``path`` through sha256 and return the 64-char lowercase hex digest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def is_digest(value: str) -> bool:
    """True only for exactly 64 lowercase ASCII hex characters."""
    return isinstance(value, str) and _DIGEST_RE.fullmatch(value) is not None


def _integrity_error(digest: str, actual: str) -> IntegrityError:
    return IntegrityError(
        f"artifact {digest} is corrupt: expected sha256 {digest}, actual {actual}; "
        f"re-register the original file (put_file/put_tree) to replace the damaged copy"
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def tree_entries(directory: Path, *, links_within: Path | None = None) -> list[tuple[str, Path]]:
    """(name in the tree, path) of every file `put_tree` would store, or UnsafeArtifactError saying what to fix.

    Public so a checkpoint is refused for a symlink, an odd name or a special file while its requirements are
    checked, before anything is read from it or stored (a refusal mid-upload would leave the data files stored).
    """
    directory = Path(directory)
    try:
        mode = os.lstat(directory).st_mode
    except FileNotFoundError:
        raise UnsafeArtifactError(f"{directory} does not exist") from None
    if not stat.S_ISDIR(mode):
        raise UnsafeArtifactError(f"{directory} is not a directory (symlinks are refused)")
    allowed = links_within.resolve() if links_within is not None else None
    out: list[tuple[str, Path]] = []
    stack: list[tuple[Path, tuple[str, ...]]] = [(directory, ())]
    while stack:
        folder, prefix = stack.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name == "README.md":
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                if allowed is None or not target.is_relative_to(allowed):
                    raise UnsafeArtifactError(
                        f"{path} is a symlink; copy the model with links resolved (cp -rL) and store that copy")
            if not _NAME_RE.fullmatch(entry.name):
                raise UnsafeArtifactError(
                    f"file name {entry.name!r} in {folder} is not allowed; rename it to match "
                    f"{_NAME_RE.pattern} (letters, digits, '.', '_', '-')"
                )
            if path.is_dir():
                if len(prefix) >= MAX_TREE_DEPTH - 1:
                    raise UnsafeArtifactError(f"{path} is nested more than {MAX_TREE_DEPTH} folders deep")
                stack.append((path, (*prefix, entry.name)))
            elif path.is_file():
                out.append(("/".join((*prefix, entry.name)), path))
                if len(out) > MAX_TREE_FILES:
                    raise UnsafeArtifactError(f"{directory} holds more than {MAX_TREE_FILES} files; is it a model?")
            else:
                raise UnsafeArtifactError(f"{path} is not a regular file")
    if not out:
        raise UnsafeArtifactError(f"{directory} has no files to store")
    return sorted(out)


class RemoteObjects(Protocol):
    """Where objects live when processes share no disk; the store's own directory is then a cache of it.

    A name is an object's sha256, or ``quarantine/<sha256>`` for a payload kept as evidence. Calls block, stream
    (memory stays flat whatever the size) and may come from any thread."""

    where: str  # for messages: which bucket

    def has(self, name: str) -> bool:
        """True when the remote holds `name` whole under its own digest."""
        ...

    def put(self, name: str, path: Path) -> None:
        """Store the file at `path` as `name`, unless it is there intact already."""
        ...

    def get(self, name: str, dest: Path) -> str:
        """Write `name` into the file `dest`; return the sha256 of what was written (ArtifactNotFoundError naming
        the name and the remote when absent)."""
        ...


def open_store(settings: Settings, inbox_prefix: str = "_INBOX") -> ArtifactStore:
    """The store the settings choose: the filesystem under `artifacts_dir` (the embedded default), or, with
    `artifact_backend` "nats", that directory as a cache of the JetStream Object Store bucket `artifact_bucket`
    (a service names its own `inbox_prefix`: its NATS user reads replies there only)."""
    root = settings.resolved_artifacts_dir()
    if settings.artifact_backend == "filesystem":
        return ArtifactStore(root)
    from weightflow.shared.nats_objects import for_settings

    return ArtifactStore(root, remote=for_settings(settings, inbox_prefix))


def _quarantine_name(digest: str) -> str:
    return f"quarantine/{digest}"


class ArtifactStore:
    """Objects live at ``root/objects/<digest[:2]>/<digest[2:]>``; see the module docstring."""

    def __init__(self, root: Path, remote: RemoteObjects | None = None) -> None:
        self.remote = remote
        self._fetching: dict[str, threading.Lock] = {}  # one download per object at a time in this process
        self._fetching_guard = threading.Lock()
        self.root: Path = Path(root).resolve()
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.trees = self.root / "trees"
        self.quarantined = self.root / "quarantine"
        for d in (self.objects, self.tmp, self.trees, self.quarantined):
            d.mkdir(parents=True, exist_ok=True)
            if d.is_symlink() or not d.is_dir():
                raise UnsafeArtifactError(f"{d} must be a real directory, not a symlink or file")

    # -- addressing -------------------------------------------------------------------------

    def _object_path(self, digest: str) -> Path:
        """Build the object path from a validated digest; the object itself may not exist."""
        if not is_digest(digest):
            raise ValueError(f"{digest!r} is not an artifact digest (64 lowercase hex characters)")
        shard = self.objects / digest[:2]
        if shard.is_symlink() or (shard.exists() and shard.resolve() != shard):
            raise UnsafeArtifactError(f"{shard} is a symlink; the store was tampered with, rebuild it")
        return shard / digest[2:]

    def path_of(self, digest: str) -> Path:
        """Path of an existing object (unverified; fetched from the remote on a miss); refuses anything that is
        not a plain digest."""
        try:
            return self._local_path(digest)
        except ArtifactNotFoundError:
            if self.remote is None:
                raise
        self._fetch(digest)
        return self._local_path(digest)

    def _local_path(self, digest: str) -> Path:
        path = self._object_path(digest)
        if path.is_symlink():
            raise UnsafeArtifactError(f"object {digest} is a symlink; re-register the original file")
        if not path.resolve().is_relative_to(self.objects):
            raise UnsafeArtifactError(f"object {digest} resolves outside {self.objects}")
        if not path.is_file():
            raise ArtifactNotFoundError(f"no artifact {digest} in {self.objects}")
        return path

    def exists(self, digest: str) -> bool:
        """In this store, or in its remote (without fetching it)."""
        try:
            self._local_path(digest)
        except ArtifactNotFoundError:
            return self.remote is not None and self.remote.has(digest)
        return True

    def _fetch(self, digest: str) -> None:
        """Stream a missing object from the remote into the cache: checked against its name and sniffed before it
        is placed, like anything else that enters the store."""
        assert self.remote is not None
        with self._fetching_guard:
            lock = self._fetching.setdefault(digest, threading.Lock())
        with lock:
            if self._object_path(digest).is_file():  # another thread fetched it meanwhile
                return
            fd, name = tempfile.mkstemp(dir=self.tmp, prefix="get-")
            os.close(fd)
            tmp = Path(name)
            try:
                actual = self.remote.get(digest, tmp)
                if actual != digest:
                    raise IntegrityError(f"artifact {digest} from {self.remote.where} is corrupt: expected sha256 "
                                         f"{digest}, actual {actual}; store the original file again (put_file)")
                sniff_kind(tmp)
                self._place(tmp, digest)
            finally:
                tmp.unlink(missing_ok=True)
                with self._fetching_guard:
                    self._fetching.pop(digest, None)

    def size_of(self, digest: str) -> int:
        return self.path_of(digest).stat().st_size

    # -- verified reads ---------------------------------------------------------------------

    def verify(self, digest: str) -> None:
        actual = sha256_file(self.path_of(digest))
        if actual != digest:
            raise _integrity_error(digest, actual)

    def open_verified(self, digest: str) -> Path:
        self.verify(digest)
        return self.path_of(digest)

    def read_bytes(self, digest: str) -> bytes:
        data = self.path_of(digest).read_bytes()
        actual = hashlib.sha256(data).hexdigest()  # hash exactly the bytes we return
        if actual != digest:
            raise _integrity_error(digest, actual)
        return data

    def read_json(self, digest: str) -> Any:
        return strict_json_loads(self.read_bytes(digest))

    # -- writes -----------------------------------------------------------------------------

    def put_file(self, src: Path) -> str:
        """Store a regular file (never a symlink) after checking its content; return its digest."""
        src = Path(src)
        mode = os.lstat(src).st_mode
        if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
            raise UnsafeArtifactError(f"{src} is a symlink or not a regular file; pass the real file")
        sniff_kind(src)  # refuse unsafe content before copying anything
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UnsafeArtifactError(f"{src} changed into a non-regular file while being stored")
            return self._ingest(f, suffix="")

    def put_bytes(self, data: bytes, *, suffix_hint: str = "") -> str:
        """Store ``data`` under the same rules as ``put_file``; ``suffix_hint`` only names the temp file."""
        suffix = suffix_hint if _SUFFIX_RE.fullmatch(suffix_hint) else ""
        return self._ingest(io.BytesIO(data), suffix=suffix)

    def _ingest(self, reader: BinaryIO, *, suffix: str) -> str:
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="put-", suffix=suffix)
        tmp = Path(name)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while chunk := reader.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sniff_kind(tmp)  # sniff the copy too: what we store is exactly what was checked
            digest = h.hexdigest()
            self._place(tmp, digest)
            if self.remote is not None:  # before the digest is returned, so no event names what others cannot fetch
                self.remote.put(digest, self._local_path(digest))
            return digest
        finally:
            tmp.unlink(missing_ok=True)

    def _place(self, tmp: Path, digest: str) -> None:
        """Move a verified temp file into place, keeping a good existing object, replacing a bad one."""
        target = self._object_path(digest)
        if target.is_file() and not target.is_symlink() and sha256_file(target) == digest:
            return
        shard = target.parent
        if not shard.is_dir():
            shard.mkdir()
            _fsync_dir(self.objects)
            self._object_path(digest)  # re-check the fresh shard is not a symlink
        os.chmod(tmp, 0o444)
        os.replace(tmp, target)  # replaces a corrupt file or a planted symlink itself
        _fsync_dir(shard)

    # -- quarantine: bytes kept as evidence, never loaded as a model ---------------------------

    def quarantine(self, data: bytes) -> str:
        """Keep arbitrary bytes (a dead letter's payload) by digest, apart from the objects: nothing in the
        quarantine is ever sniffed, materialized or loaded, so any content may go there."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.quarantined / digest
        if not (target.is_file() and not target.is_symlink()):
            fd, name = tempfile.mkstemp(dir=self.tmp, prefix="quarantine-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(name, 0o444)
                os.replace(name, target)
            finally:
                Path(name).unlink(missing_ok=True)
        if self.remote is not None:  # `dlq show` and `replay` run elsewhere
            self.remote.put(_quarantine_name(digest), target)
        return digest

    def read_quarantined(self, digest: str) -> bytes:
        if not is_digest(digest):
            raise ValueError(f"{digest!r} is not an artifact digest (64 lowercase hex characters)")
        path = self.quarantined / digest
        if self.remote is not None and not path.is_symlink() and not path.is_file():
            fd, name = tempfile.mkstemp(dir=self.tmp, prefix="get-quarantine-")
            os.close(fd)
            try:  # never sniffed or loaded (any content may be quarantined): only its digest is checked
                actual = self.remote.get(_quarantine_name(digest), Path(name))
                if actual != digest:
                    raise _integrity_error(digest, actual)
                os.chmod(name, 0o444)
                os.replace(name, path)
            finally:
                Path(name).unlink(missing_ok=True)
        if path.is_symlink() or not path.is_file():
            raise ArtifactNotFoundError(f"no quarantined payload {digest} in {self.quarantined}")
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise _integrity_error(digest, actual)
        return data

    # -- trees ------------------------------------------------------------------------------

    def put_tree(self, directory: Path, *, links_within: Path | None = None) -> str:
        """Store a model directory (subfolders included) plus its index; return the index's digest.

        Hidden files and README.md are skipped. Symlinks are refused, except, with `links_within`, links
        whose target resolves inside that folder (the Hugging Face cache links snapshot files to blobs).
        """
        files: dict[str, str] = {}
        for name, path in tree_entries(directory, links_within=links_within):
            files[name] = self.put_file(path.resolve() if path.is_symlink() else path)
        index = json.dumps({"kind": TREE_KIND, "files": files}, sort_keys=True, separators=(",", ":"))
        return self.put_bytes(index.encode(), suffix_hint=".json")

    def tree_files(self, digest: str) -> dict[str, str]:
        """Read and schema-check a tree's index; return ``{file name: digest}``."""
        data = self.read_bytes(digest)
        try:
            doc = strict_json_loads(data)
        except (ValueError, RecursionError) as exc:
            raise UnsafeArtifactError(f"artifact {digest} is not a JSON tree index: {exc}") from None
        files = doc.get("files") if isinstance(doc, dict) else None
        if (
            not isinstance(doc, dict)
            or set(doc) != {"kind", "files"}
            or doc["kind"] != TREE_KIND
            or not isinstance(files, dict)
            or not files
            or not all(isinstance(n, str) and _tree_name_ok(n) for n in files)
            or not all(isinstance(d, str) and is_digest(d) for d in files.values())
        ):
            raise UnsafeArtifactError(
                f"artifact {digest} is not a valid {TREE_KIND} index; store the directory with put_tree"
            )
        return dict(files)

    def materialize_tree(self, digest: str) -> Path:
        """Return ``root/trees/<digest>/`` holding the tree's files, verified, (re)built atomically."""
        files = self.tree_files(digest)
        target = self.trees / digest
        if self._tree_matches(target, files):
            return target
        build = Path(tempfile.mkdtemp(dir=self.tmp, prefix="tree-"))
        stale = self.tmp / f"stale-{uuid.uuid4().hex}"
        try:
            for name, file_digest in files.items():
                src, dst = self.path_of(file_digest), build / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:  # e.g. cross-device or no hard-link support
                    shutil.copyfile(src, dst)
                    os.chmod(dst, 0o444)
                actual = sha256_file(dst)  # verify what the caller will actually load
                if actual != file_digest:
                    raise _integrity_error(file_digest, actual)
            _fsync_dir(build)
            if os.path.lexists(target):
                os.replace(target, stale)
            try:
                os.replace(build, target)
            except OSError:  # a concurrent builder won the race; accept its result if it is right
                if not self._tree_matches(target, files):
                    raise
            _fsync_dir(self.trees)
            return target
        finally:
            _remove(build)
            _remove(stale)

    @staticmethod
    def _tree_matches(directory: Path, files: dict[str, str]) -> bool:
        if directory.is_symlink() or not directory.is_dir():
            return False
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(directory):
            rel = Path(dirpath).relative_to(directory)
            if any(os.path.islink(os.path.join(dirpath, d)) for d in dirnames):
                return False
            found += [(rel / f).as_posix() for f in filenames]
        if set(found) != set(files):
            return False
        return all(
            not (directory / name).is_symlink() and sha256_file(directory / name) == d for name, d in files.items()
        )
