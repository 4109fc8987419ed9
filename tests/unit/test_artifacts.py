"""Tests for the content-addressed artifact store and the safetensors/content checks."""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from weightflow.shared.artifacts import (
    ArtifactNotFoundError,
    ArtifactStore,
    IntegrityError,
    is_digest,
    sha256_file,
)
from weightflow.shared.safetensors_check import UnsafeArtifactError, sniff_kind, validate_safetensors


def objects_in(store: ArtifactStore) -> list[Path]:
    return sorted(p for p in store.objects.rglob("*") if not p.is_dir())


def flip_byte(path: Path, index: int = -1) -> None:
    os.chmod(path, 0o644)  # objects are read-only; make sure the tamper works as non-root too
    data = bytearray(path.read_bytes())
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def st_bytes(header: dict[str, Any] | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """Hand-build a safetensors file: u64 little-endian header length + JSON header + data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def tensor_file(tmp_path: Path) -> Path:
    path = tmp_path / "weights.safetensors"
    save_file(
        {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(2, dtype=torch.bfloat16)},
        str(path),
        metadata={"format": "pt"},
    )
    return path


# -- round trips -------------------------------------------------------------------------------


def test_put_file_and_bytes_round_trip_dedupes(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "config.json"
    src.write_text('{"hidden_size": 8}')
    digest = store.put_file(src)
    assert is_digest(digest) and digest == sha256_file(src)
    assert store.put_file(src) == digest
    assert store.put_bytes(src.read_bytes(), suffix_hint=".json") == digest
    assert objects_in(store) == [store.objects / digest[:2] / digest[2:]]
    assert store.read_json(digest) == {"hidden_size": 8}
    assert store.read_bytes(digest) == src.read_bytes()
    assert store.size_of(digest) == src.stat().st_size
    assert store.exists(digest)
    assert not store.exists("0" * 64)
    with pytest.raises(ArtifactNotFoundError):
        store.path_of("0" * 64)
    text = store.put_bytes(b"plain text\n")
    assert text != digest and len(objects_in(store)) == 2
    assert list(store.tmp.iterdir()) == []


def test_corrupt_object_detected_and_healed(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("hello weights\n")
    digest = store.put_file(src)
    flip_byte(store.path_of(digest))
    with pytest.raises(IntegrityError) as err:
        store.verify(digest)
    assert digest in str(err.value) and "re-register" in str(err.value)
    with pytest.raises(IntegrityError):
        store.open_verified(digest)
    with pytest.raises(IntegrityError):
        store.read_bytes(digest)
    assert store.put_file(src) == digest  # putting the good file again heals the store
    store.verify(digest)
    assert store.open_verified(digest).read_bytes() == src.read_bytes()


def test_symlinked_object_refused_and_healed(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("real content")
    digest = store.put_file(src)
    obj = store.path_of(digest)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    obj.unlink()
    obj.symlink_to(outside)
    with pytest.raises(UnsafeArtifactError):
        store.path_of(digest)
    other = store.path_of(store.put_bytes(b"another object"))
    obj.unlink()
    obj.symlink_to(other)  # even a link that stays inside the store is refused
    with pytest.raises(UnsafeArtifactError, match="symlink"):
        store.path_of(digest)
    assert store.put_file(src) == digest
    assert not obj.is_symlink() and store.read_bytes(digest) == b"real content"
    assert outside.read_text() == "secret"


def test_real_safetensors_accepted(store: ArtifactStore, tensor_file: Path) -> None:
    header = validate_safetensors(tensor_file)
    assert set(header) == {"w", "b"}
    assert header["w"]["dtype"] == "F32" and header["w"]["shape"] == [3, 4]
    assert header["b"]["dtype"] == "BF16" and header["b"]["shape"] == [2]
    assert sniff_kind(tensor_file) == "safetensors"
    digest = store.put_file(tensor_file)
    loaded = load_file(str(store.open_verified(digest)))
    assert torch.equal(loaded["w"], torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_sniff_json_text_and_binary(tmp_path: Path) -> None:
    cases = {
        "a.bin": b'[1, 2, {"x": null}]',
        "b.safetensors": b"# just text\nline 2\n",
        "c.json": b'"scalar"',
    }
    kinds = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        kinds[name] = sniff_kind(tmp_path / name)
    assert kinds == {"a.bin": "json", "b.safetensors": "text", "c.json": "text"}
    for name, data in {
        "nul.txt": b"abc\x00def",
        "bin.json": bytes(range(256)),
        "dup.json": b'{"a":1,"a":2}',
    }.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnsafeArtifactError):
            sniff_kind(tmp_path / name)


# -- unsafe content ----------------------------------------------------------------------------


def test_pickles_and_torch_zips_refused(store: ArtifactStore, tmp_path: Path) -> None:
    fake = tmp_path / "model.safetensors"
    for payload, needle in [
        (pickle.dumps({"w": [1.0, 2.0]}), "pickle"),
        (pickle.dumps({"w": "x"}, protocol=0), "pickle"),  # text-looking protocol-0 pickle
        (pickle.dumps([1, 2, 3], protocol=1), "pickle"),
    ]:
        fake.write_bytes(payload)
        with pytest.raises(UnsafeArtifactError, match=needle) as err:
            store.put_file(fake)
        assert "safetensors.torch.save_file" in str(err.value)
        with pytest.raises(UnsafeArtifactError):
            store.put_bytes(payload)
    fake.unlink()
    torch.save(torch.ones(3), fake)
    with pytest.raises(UnsafeArtifactError, match="is a zip archive"):
        store.put_file(fake)
    assert objects_in(store) == []
    assert list(store.tmp.iterdir()) == []


def test_zip_refused(store: ArtifactStore, tmp_path: Path) -> None:
    archive = tmp_path / "weights.json"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data.json", "{}")
    with pytest.raises(UnsafeArtifactError, match="is a zip archive"):
        store.put_file(archive)
    assert objects_in(store) == []


def test_non_regular_sources_refused(store: ArtifactStore, tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("x")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    with pytest.raises(UnsafeArtifactError, match="symlink"):
        store.put_file(link)
    with pytest.raises(UnsafeArtifactError):
        store.put_file(tmp_path)
    assert objects_in(store) == []


# -- traversal ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "..%2f..%2fetc",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/etc/passwd",
        "ab/" + "c" * 61,
        "A" * 64,
        "\u0661" * 64,  # Arabic-Indic digit one: str.isdigit() is True
        "\uff10" * 64,  # fullwidth zero
        "a" * 63,
        "a" * 65,
        "a" * 64 + "\n",
        "",
    ],
)
def test_path_of_rejects_non_digests(store: ArtifactStore, tmp_path: Path, bad: str) -> None:
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("untouched")
    before = sorted(tmp_path.rglob("*"))
    for call in (store.path_of, store.exists, store.verify, store.read_bytes, store.materialize_tree):
        with pytest.raises(ValueError):
            call(bad)
    assert not is_digest(bad)
    assert sorted(tmp_path.rglob("*")) == before
    assert sentinel.read_text() == "untouched"


# -- trees -------------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path: Path, tensor_file: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "tiny"}')
    (d / "model.safetensors").write_bytes(tensor_file.read_bytes())
    (d / "vocab.txt").write_text("a\nb\n")
    (d / "README.md").write_bytes(b"\x00 skipped even though binary")
    (d / ".gitattributes").write_text("skipped")
    (d / "sub").mkdir()
    (d / "sub" / "nested.txt").write_text("kept, with its folder")
    return d


def test_tree_round_trip_and_tamper_rebuild(store: ArtifactStore, model_dir: Path) -> None:
    digest = store.put_tree(model_dir)
    assert store.put_tree(model_dir) == digest  # deterministic manifest
    files = store.tree_files(digest)
    assert set(files) == {"config.json", "model.safetensors", "vocab.txt", "sub/nested.txt"}
    out = store.materialize_tree(digest)
    assert out == store.trees / digest
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(files)
    for name in files:
        assert (out / name).read_bytes() == (model_dir / name).read_bytes()
    assert store.materialize_tree(digest) == out

    # Replace a materialized file with different content: detected and rebuilt.
    (out / "vocab.txt").unlink()
    (out / "vocab.txt").write_text("evil\n")
    (out / "extra.txt").write_text("planted")
    assert store.materialize_tree(digest) == out
    assert (out / "vocab.txt").read_text() == "a\nb\n"
    assert not (out / "extra.txt").exists()
    assert [p.name for p in store.tmp.iterdir()] == []

    # Writing in place into a hard-linked copy also corrupts the object: refuse, then heal by re-putting.
    flip_byte(out / "config.json", 0)
    with pytest.raises(IntegrityError):
        store.materialize_tree(digest)
    store.put_tree(model_dir)
    assert (store.materialize_tree(digest) / "config.json").read_bytes() == b'{"model_type": "tiny"}'


def test_materialize_falls_back_to_copies(
    store: ArtifactStore, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = store.put_tree(model_dir)

    def no_link(src: object, dst: object) -> None:
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    out = store.materialize_tree(digest)
    for name, file_digest in store.tree_files(digest).items():
        assert sha256_file(out / name) == file_digest
        assert (out / name).stat().st_ino != store.path_of(file_digest).stat().st_ino


def test_tree_symlinks_refused(store: ArtifactStore, model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "sub" / "link").symlink_to(tmp_path / "anything")
    with pytest.raises(UnsafeArtifactError, match="symlink"):
        store.put_tree(model_dir)
    (model_dir / "sub" / "link").unlink()
    (model_dir / "weights.safetensors").symlink_to(model_dir / "model.safetensors")
    with pytest.raises(UnsafeArtifactError, match="symlink"):
        store.put_tree(model_dir)
    linked_dir = tmp_path / "linked"
    linked_dir.symlink_to(model_dir)
    with pytest.raises(UnsafeArtifactError):
        store.put_tree(linked_dir)


@pytest.mark.parametrize("name", ["bad name.txt", "-rf", "_x", "caf\u00e9.json", "a" * 129, "semi;colon"])
def test_tree_bad_names_refused(store: ArtifactStore, model_dir: Path, name: str) -> None:
    (model_dir / name).write_text("x")
    with pytest.raises(UnsafeArtifactError, match="not allowed"):
        store.put_tree(model_dir)


def test_tree_files_rejects_non_manifests(store: ArtifactStore) -> None:
    good = "0" * 64
    for doc in [
        {"kind": "other", "files": {"a.txt": good}},
        {"kind": "weightflow.tree/v1", "files": {"../a": good}},
        {"kind": "weightflow.tree/v1", "files": {"a.txt": "../../etc/passwd"}},
        {"kind": "weightflow.tree/v1", "files": {}},
        {"kind": "weightflow.tree/v1", "files": {"a.txt": good}, "extra": 1},
        [1, 2],
    ]:
        digest = store.put_bytes(json.dumps(doc).encode())
        with pytest.raises(UnsafeArtifactError):
            store.tree_files(digest)
    with pytest.raises(UnsafeArtifactError):
        store.tree_files(store.put_bytes(b"not json"))


# -- malformed safetensors ---------------------------------------------------------------------

F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x01\x00\x00", "shorter than"),
        (st_bytes({"t": F32x2}, b"\0" * 8, length=10_000), "larger than"),
        (st_bytes(b'{"t": %s, "t": %s}' % ((json.dumps(F32x2).encode(),) * 2), b"\0" * 8), "duplicate"),
        (
            st_bytes(
                {"a": F32x2, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                b"\0" * 12,
            ),
            "overlap",
        ),
        (st_bytes({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 8), "past the"),
        (st_bytes({"t": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "dtype"),
        (st_bytes({"t": {"dtype": "F128", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "dtype"),
        (st_bytes({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "needs"),
        (st_bytes({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8), "shape"),
        (st_bytes({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8), "data_offsets"),
        (
            st_bytes({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}, b"\0" * 8),
            "data_offsets",
        ),
        (st_bytes({"t": {**F32x2, "extra": 1}}, b"\0" * 8), "exactly"),
        (st_bytes({"t": F32x2}, b"\0" * 8 + b"GARBAGE!"), "trailing"),
        (st_bytes({"t": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "gap"),
        (st_bytes({"t": F32x2, "__metadata__": {"k": 1}}, b"\0" * 8), "__metadata__"),
        (st_bytes(b"[1, 2]"), "not a JSON object"),
        (st_bytes(b'{"t": \xff}'), "UTF-8"),
    ],
)
def test_malformed_safetensors_refused(
    store: ArtifactStore, tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(UnsafeArtifactError, match=reason):
        validate_safetensors(path)
    with pytest.raises(UnsafeArtifactError):
        sniff_kind(path)
    with pytest.raises(UnsafeArtifactError):
        store.put_file(path)
    assert objects_in(store) == []


def test_handbuilt_safetensors_valid(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    header = {
        "__metadata__": {"format": "pt"},
        "b": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]},
        "a": F32x2,
        "empty": {"dtype": "F16", "shape": [0, 4], "data_offsets": [11, 11]},
    }
    path.write_bytes(st_bytes(header, b"\0" * 11))
    assert set(validate_safetensors(path)) == {"a", "b", "empty"}
    assert sniff_kind(path) == "safetensors"


@pytest.mark.parametrize("limit", [100 * 1024 * 1024, 2**63])
def test_huge_header_length_fails_fast_without_allocating(tmp_path: Path, limit: int) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(st_bytes({"t": F32x2}, b"\0" * 8, length=2**62))
    start = time.perf_counter()
    with pytest.raises(UnsafeArtifactError):
        validate_safetensors(path, max_header_bytes=limit)
    assert time.perf_counter() - start < 0.5
    # A length under the limit but beyond the file must not be read (bounded memory).
    path.write_bytes(st_bytes({"t": F32x2}, b"\0" * 8, length=50 * 1024 * 1024))
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArtifactError, match="larger than"):
            validate_safetensors(path, max_header_bytes=limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
