"""3. Artifact hashing and verify: ArtifactStore.put_file / verify vs `sha256sum` on the same file.

The file is a valid safetensors file (one U8 tensor of random bytes), since the store refuses any
other binary. Each weightflow operation runs in a fresh child process that reports its own time and
peak RSS (`ru_maxrss`) before and after, so the RSS growth is the operation's alone; `sha256sum`'s peak
RSS comes from `wait4`. Doing it at two file sizes shows whether memory grows with the file (it must
not: the store streams 1 MiB chunks).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Config, Report, Row, Stat, bench_env
from bench.procmem import reset_peak, status_kib

NAME = "hashing"
MiB = 1024 * 1024


def make_safetensors(path: Path, size: int) -> Path:
    """A `size`-byte safetensors file: header, then one U8 tensor of random bytes tiling the rest."""
    header_len = 128  # padded with spaces (allowed JSON whitespace) to a fixed, 8-aligned length
    data_len = size - 8 - header_len
    header = json.dumps({"blob": {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]}})
    header_bytes = header.encode().ljust(header_len, b" ")
    if len(header_bytes) != header_len:
        raise ValueError(f"size {size} is too large for a {header_len}-byte header")
    with path.open("wb") as out:
        out.write(header_len.to_bytes(8, "little"))
        out.write(header_bytes)
        remaining = data_len
        while remaining:
            chunk = os.urandom(min(remaining, 8 * MiB))
            out.write(chunk)
            remaining -= len(chunk)
    if path.stat().st_size != size:
        raise RuntimeError(f"made {path.stat().st_size} bytes, wanted {size}")
    return path


def _evict(path: Path) -> None:
    """Drop this one file's pages from the page cache (a cold read) without touching anything else."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _child_main(op: str, store_root: str, target: str) -> None:
    """Runs in a fresh interpreter: one store operation, timed, with RSS before and the peak during it."""
    from weightflow.shared.artifacts import ArtifactStore

    store = ArtifactStore(Path(store_root))
    exact = reset_peak()
    before_kib = status_kib("VmRSS") if exact else None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    before = before_kib / 1024.0 if before_kib is not None else maxrss
    start = time.perf_counter()
    if op == "put":
        result = store.put_file(Path(target))
    elif op == "verify":
        store.verify(target)
        result = target
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - start
    peak_kib = status_kib("VmHWM") if exact else None
    peak = peak_kib / 1024.0 if peak_kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"seconds": seconds, "rss_before_mib": before, "rss_peak_mib": peak, "digest": result,
                      "peak_method": "VmHWM after clear_refs" if exact else "ru_maxrss"}))


def _child(op: str, store_root: Path, target: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.hashing", op, str(store_root), target],
                          capture_output=True, text=True, env=bench_env(), check=False, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"child {op} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _timed_command(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, stdout). The peak is polled from /proc/PID/status VmHWM: `ru_maxrss` of a
    child forked from this (large) interpreter would report this interpreter's size, not the command's."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak_kib = 0.0
    while proc.poll() is None:
        hwm = status_kib("VmHWM", proc.pid)
        if hwm is not None:
            peak_kib = max(peak_kib, hwm)
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed with exit {proc.returncode}")
    return seconds, peak_kib / 1024.0, out


def _fresh_store(root: Path) -> Path:
    if root.exists():
        for path in root.rglob("*"):  # objects are read-only; make them removable
            if path.is_file():
                path.chmod(0o644)
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return root


def run(cfg: Config) -> Report:
    report = Report(NAME, "3. Artifact hashing and verify (ArtifactStore vs sha256sum)")
    size = 32 * MiB if cfg.smoke else 1024 * MiB
    small = 8 * MiB if cfg.smoke else 128 * MiB
    reps = max(1, cfg.reps if not cfg.smoke else min(cfg.reps, 2))
    mb = size / 1e6
    report.config = {"file_bytes": size, "small_file_bytes": small, "sha256sum": shutil.which("sha256sum")}
    sha256sum = shutil.which("sha256sum")
    if sha256sum is None:
        raise RuntimeError("sha256sum is not on PATH; install coreutils")
    with tempfile.TemporaryDirectory(prefix="wf-bench-hash-") as tmp_name:
        tmp = Path(tmp_name)
        src = make_safetensors(tmp / "big.safetensors", size)
        store_root = tmp / "store"
        copy_dst = tmp / "copy.safetensors"
        expected = _timed_command([sha256sum, str(src)])[2].split()[0]

        put_s, put_rss, verify_s, verify_rss, sum_s, sum_rss, sum_obj_s, cp_s = ([] for _ in range(8))
        rss_base: list[float] = []
        cold_verify: list[float] = []
        cold_sum: list[float] = []
        for rep in range(reps + 1):  # the first round warms caches and imports and is not recorded
            _fresh_store(store_root)
            put = _child("put", store_root, str(src))
            if put["digest"] != expected:
                raise RuntimeError(f"put_file digest {put['digest']} != sha256sum {expected}")
            ver = _child("verify", store_root, expected)
            obj = store_root / "objects" / expected[:2] / expected[2:]
            s_sec, s_rss, _ = _timed_command([sha256sum, str(src)])
            o_sec, _, _ = _timed_command([sha256sum, str(obj)])
            copy_dst.unlink(missing_ok=True)
            c_sec, _, _ = _timed_command(["sh", "-c", f'{sha256sum} "$0" >/dev/null && cp "$0" "$1" && sync "$1"',
                                          str(src), str(copy_dst)])
            _evict(obj)
            cold = _child("verify", store_root, expected)
            _evict(obj)
            cold_s, _, _ = _timed_command([sha256sum, str(obj)])
            if rep == 0:
                continue
            put_s.append(put["seconds"])
            put_rss.append(put["rss_peak_mib"] - put["rss_before_mib"])
            rss_base.append(put["rss_before_mib"])
            verify_s.append(ver["seconds"])
            verify_rss.append(ver["rss_peak_mib"] - ver["rss_before_mib"])
            sum_s.append(s_sec)
            sum_rss.append(s_rss)
            sum_obj_s.append(o_sec)
            cp_s.append(c_sec)
            cold_verify.append(cold["seconds"])
            cold_sum.append(cold_s)
        copy_dst.unlink(missing_ok=True)

        small_src = make_safetensors(tmp / "small.safetensors", small)
        _fresh_store(store_root)
        small_put = _child("put", store_root, str(small_src))
        small_ver = _child("verify", store_root, small_put["digest"])
        _fresh_store(store_root)

    report.add(Row("register (put_file) throughput", "MB/s", Stat.of([mb / s for s in put_s]),
                   Stat.of([mb / s for s in sum_s]), "sha256sum (hash only)", "higher",
                   note="put_file = read + sha256 + write copy + fsync + sniff + atomic place"))
    report.add(Row("register (put_file) throughput", "MB/s", Stat.of([mb / s for s in put_s]),
                   Stat.of([mb / s for s in cp_s]), "sha256sum + cp + sync", "higher",
                   note="shell doing the same work: hash, copy, flush to disk"))
    report.add(Row("verify throughput (warm page cache)", "MB/s", Stat.of([mb / s for s in verify_s]),
                   Stat.of([mb / s for s in sum_obj_s]), "sha256sum of the stored object", "higher"))
    report.add(Row("verify throughput (cold: file evicted from page cache)", "MB/s",
                   Stat.of([mb / s for s in cold_verify]), Stat.of([mb / s for s in cold_sum]),
                   "sha256sum, also evicted", "higher", note="posix_fadvise(DONTNEED) on that one file first"))
    report.add(Row("peak RSS growth during put_file", "MiB", Stat.of(put_rss), Stat.of(sum_rss),
                   "sha256sum peak RSS (whole process, polled)", "lower",
                   note=f"child interpreter base {Stat.of(rss_base).median:.1f} MiB; file {size / MiB:.0f} MiB",
                   extra={"file_mib": size / MiB}))
    report.add(Row("peak RSS growth during verify", "MiB", Stat.of(verify_rss), Stat.of(sum_rss),
                   "sha256sum peak RSS (whole process, polled)", "lower"))
    for op, growth, small_run in (("put_file", put_rss, small_put), ("verify", verify_rss, small_ver)):
        report.add(Row(f"{op} RSS growth: {size / MiB:.0f} MiB file vs {small / MiB:.0f} MiB file", "MiB",
                       Stat.of(growth), Stat.of([small_run["rss_peak_mib"] - small_run["rss_before_mib"]]),
                       f"same op, {small / MiB:.0f} MiB file", "none",
                       note=f"ratio ~1 for a {size // small}x larger file = flat (streamed, never loaded whole)"))
    report.notes.append("MB = 10^6 bytes. Warm rows read the file from the page cache (it was just written); "
                        "cold rows evict it first, so they include the disk.")
    return report


if __name__ == "__main__":
    _child_main(*sys.argv[1:4])
