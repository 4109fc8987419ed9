"""Artifact store backends: the filesystem vs the JetStream Object Store, put and get of 1 GiB.

The same `ArtifactStore` calls on both sides, each in a fresh child process that reports its own time and peak
RSS growth (as in §3): `put_file` (the filesystem: hash, copy, fsync, sniff, place; the bucket: all that, then
the copy streamed to the bucket in 128 KiB chunks, each acknowledged) and `open_verified` by a reader that does
not hold the object (the filesystem: the object is there, hash it; the bucket: an empty cache, so stream it from
the bucket, check and sniff it, place it, then hash it). One nats-server on loopback (the embedded default's:
single node, JetStream file store with nats-server's default lazy fsync), a fresh bucket each repetition. The
RSS growth at two file sizes says whether memory follows the file (it must not).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Config, Report, Row, Stat, bench_env
from bench.hashing import MiB, _fresh_store, make_safetensors
from bench.procmem import require_kib, require_reset_peak, status_kib

NAME = "artifact_store"


def _child_main(op: str, store_root: str, target: str, url: str = "", bucket: str = "") -> None:
    """Runs in a fresh interpreter: one store operation, timed, with RSS before and the peak during it."""
    from weightflow.shared.artifacts import ArtifactStore

    remote = None
    if url:
        from weightflow.shared.nats_objects import NatsObjects

        remote = NatsObjects([url], bucket)
    store = ArtifactStore(Path(store_root), remote=remote)
    if remote is not None:
        remote.has("0" * 64)  # connect (and create the bucket) before the clock starts
    require_reset_peak()
    before = require_kib("VmRSS")
    start = time.perf_counter()
    if op == "put":
        result = store.put_file(Path(target))
    elif op == "get":
        store.open_verified(target)
        result = target
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - start
    peak = require_kib("VmHWM")
    if remote is not None:
        remote.close()
    print(json.dumps({"seconds": seconds, "rss_before_mib": before / 1024, "rss_peak_mib": peak / 1024,
                      "digest": result}))


def _child(op: str, store_root: Path, target: str, url: str = "", bucket: str = "") -> dict[str, Any]:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "bench.artifact_store", op, str(store_root), target, url, bucket],
                          capture_output=True, text=True, env=bench_env(), check=False, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child {op} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _drop_bucket(url: str, bucket: str) -> None:
    import nats

    async def go() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_object_store(bucket)
        finally:
            await nc.close()

    asyncio.run(go())


def _growth(run: dict[str, Any]) -> float:
    return float(run["rss_peak_mib"] - run["rss_before_mib"])


def run(cfg: Config) -> Report:
    from weightflow.shared.natsd import EmbeddedNats

    report = Report(NAME, "Artifact store: filesystem vs JetStream Object Store (put and get)")
    size = 4 * MiB if cfg.smoke else 1024 * MiB
    small = 1 * MiB if cfg.smoke else 128 * MiB
    reps = max(1, cfg.reps if not cfg.smoke else min(cfg.reps, 2))
    mb = size / 1e6
    report.config = {"file_bytes": size, "small_file_bytes": small, "chunk_bytes": 128 * 1024}
    samples: dict[str, list[float]] = {k: [] for k in ("fs_put", "fs_get", "os_put", "os_get", "fs_put_rss",
                                                        "fs_get_rss", "os_put_rss", "os_get_rss")}
    with tempfile.TemporaryDirectory(prefix="wf-bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        src = make_safetensors(tmp / "big.safetensors", size)
        with EmbeddedNats(tmp / "nats") as server:
            for rep in range(reps + 1):  # the first round warms caches and imports and is not recorded
                bucket = f"BENCH_{rep}"
                fs_put = _child("put", _fresh_store(tmp / "fs"), str(src))
                digest = fs_put["digest"]
                fs_get = _child("get", tmp / "fs", digest)
                os_put = _child("put", _fresh_store(tmp / "writer"), str(src), server.url, bucket)
                os_get = _child("get", _fresh_store(tmp / "reader"), digest, server.url, bucket)
                if os_put["digest"] != digest:
                    raise RuntimeError(f"the bucket's put named {os_put['digest']}, the filesystem's {digest}")
                _drop_bucket(server.url, bucket)
                if rep == 0:
                    continue
                for side, run_ in (("fs_put", fs_put), ("fs_get", fs_get), ("os_put", os_put), ("os_get", os_get)):
                    samples[side].append(mb / run_["seconds"])
                    samples[side + "_rss"].append(_growth(run_))
            small_src = make_safetensors(tmp / "small.safetensors", small)
            small_put = _child("put", _fresh_store(tmp / "writer"), str(small_src), server.url, "BENCH_SMALL")
            small_get = _child("get", _fresh_store(tmp / "reader"), small_put["digest"], server.url, "BENCH_SMALL")
            server_peak = status_kib("VmHWM", server.process.pid) if server.process else None
            _drop_bucket(server.url, "BENCH_SMALL")
        for d in ("fs", "writer", "reader"):
            _fresh_store(tmp / d)

    s = {k: Stat.of(v) for k, v in samples.items()}
    report.add(Row("put_file throughput", "MB/s", s["os_put"], s["fs_put"], "filesystem put_file", "higher",
                   note="bucket = the filesystem's work + streamed to JetStream, each 128 KiB chunk acknowledged"))
    report.add(Row("get (open_verified, object not local) throughput", "MB/s", s["os_get"], s["fs_get"],
                   "filesystem open_verified (object local)", "higher",
                   note="bucket = stream into the cache (direct gets, hashed), sniff, place, then verify again"))
    report.add(Row("peak RSS growth during put_file", "MiB", s["os_put_rss"], s["fs_put_rss"], "filesystem",
                   "lower", note=f"file {size / MiB:.0f} MiB; the child's own RSS (the nats-server is apart)"))
    report.add(Row("peak RSS growth during get", "MiB", s["os_get_rss"], s["fs_get_rss"], "filesystem", "lower"))
    for op, growth, small_run in (("put_file", samples["os_put_rss"], small_put),
                                  ("get", samples["os_get_rss"], small_get)):
        report.add(Row(f"bucket {op} RSS growth: {size / MiB:.0f} MiB file vs {small / MiB:.0f} MiB file", "MiB",
                       Stat.of(growth), Stat.of([_growth(small_run)]), f"same op, {small / MiB:.0f} MiB file",
                       "none", note=f"ratio ~1 for a {size // small}x larger file = flat (streamed)"))
    report.notes.append("MB = 10^6 bytes. Both sides read the source from the page cache (it was just written).")
    if server_peak is not None:
        report.notes.append(f"nats-server's own peak RSS over the whole comparison: {server_peak / 1024:.0f} MiB.")
    return report


if __name__ == "__main__":
    _child_main(*sys.argv[1:6])
