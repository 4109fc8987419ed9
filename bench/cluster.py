"""9. The JetStream cluster: what `sync_interval: always` costs, and how long a dead stream leader stalls writes.

Publish rate: 1 KiB messages with acks into a fresh stream, serially (one ack awaited per message, as the outbox
relay does) and with 256 in flight, on a three-node cluster (`shared.natsd.EmbeddedCluster`) with replicas 3 and
`sync_interval: always` (what weightflow's cluster config sets: the weightflow side) against the same cluster with
nats-server's default lazy fsync (every 2 minutes: the baseline), sides alternated per repetition. A single node
(the embedded default), `always` against the default, is measured beside them.

Leader loss: on the `always` cluster the node leading a stream is SIGKILLed while a publisher keeps writing (1 s
publish timeout, a retry every 10 ms); the rows are the seconds until a new leader took over (its
`leader_since`), and until the publisher's next acknowledged write (the gap clients see), then the node is
started again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from bench.harness import Config, Report, Row, Stat, interleave
from weightflow.shared.natsd import CLUSTER_SYNC_INTERVAL, EmbeddedCluster, EmbeddedNats

NAME = "cluster"
PAYLOAD = b"x" * 1024
WINDOW = 256


async def _quiet(exc: Exception) -> None:
    """A killed node refuses connections: expected here."""


async def publish_rate(urls: list[str], stream: str, replicas: int, count: int, window: int) -> float:
    """Acknowledged publishes per second into a fresh stream (deleted afterwards)."""
    nc = await nats.connect(urls, error_cb=_quiet)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"], num_replicas=replicas))
        started = time.perf_counter()
        for first in range(0, count, window):
            batch = range(first, min(count, first + window))
            if window == 1:
                await js.publish(f"{stream}.x", PAYLOAD)
            else:
                await asyncio.gather(*(js.publish(f"{stream}.x", PAYLOAD) for _ in batch))
        elapsed = time.perf_counter() - started
        await js.delete_stream(stream)
        return count / elapsed
    finally:
        await nc.close()


async def leader_loss(cluster: EmbeddedCluster) -> tuple[float, float, list[str]]:
    """(s until a new stream leader, s until the next acknowledged publish, the errors the publisher saw)."""
    nc = await nats.connect(cluster.urls, error_cb=_quiet, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    errors: list[str] = []
    try:
        js = nc.jetstream(timeout=1.0)
        await js.add_stream(StreamConfig(name="LOSS", subjects=["LOSS.>"], num_replicas=3))
        await js.publish("LOSS.x", PAYLOAD)
        cluster_info = (await js.stream_info("LOSS")).cluster
        leader = cluster_info.leader if cluster_info else None
        killed = time.time()
        cluster.kill(str(leader))
        while True:
            try:
                await js.publish("LOSS.x", PAYLOAD)
                break
            except Exception as exc:
                errors.append(type(exc).__name__)
                await asyncio.sleep(0.01)
        written = time.time() - killed
        info = await js.stream_info("LOSS")
        assert info.cluster is not None and info.cluster.leader_since is not None
        elected = info.cluster.leader_since.timestamp() - killed
        cluster.restart(str(leader))
        await js.delete_stream("LOSS")
        return elected, written, errors
    finally:
        await nc.close()


def single_node(store: Path, sync_interval: str | None) -> EmbeddedNats:
    """One nats-server, its fsync policy set in a config file (it has no flag)."""
    store.mkdir(parents=True, exist_ok=True)
    jetstream = {"store_dir": str(store / "jetstream"), **({"sync_interval": sync_interval} if sync_interval else {})}
    config = store / "nats-server.conf"
    config.write_text(json.dumps({"jetstream": jetstream}))
    return EmbeddedNats(store, config_file=config).start()


def run(cfg: Config) -> Report:
    count = 200 if cfg.smoke else 2000
    report = Report(NAME, "JetStream cluster: fsync policy cost and leader loss", config={"messages": count})
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="wf-bench-cluster-") as tmp:
        root = Path(tmp)
        always = EmbeddedCluster(root / "always", sync_interval=CLUSTER_SYNC_INTERVAL).start()
        lazy = EmbeddedCluster(root / "lazy", sync_interval=None).start()
        single_always = single_node(root / "single-always", CLUSTER_SYNC_INTERVAL)
        single_lazy = single_node(root / "single-lazy", None)
        servers: list[EmbeddedCluster | EmbeddedNats] = [always, lazy, single_always, single_lazy]
        try:
            sides: dict[str, tuple[list[str], int]] = {
                "R3 always": (always.urls, 3), "R3 lazy": (lazy.urls, 3),
                "R1 always": ([single_always.url], 1), "R1 lazy": ([single_lazy.url], 1)}
            counter = iter(range(1_000_000))
            for window in (1, WINDOW):
                def measure(side: str, window: int = window) -> float:
                    urls, replicas = sides[side]
                    return loop.run_until_complete(
                        publish_rate(urls, f"B{next(counter)}", replicas, count, window))

                samples = interleave([functools.partial(measure, side) for side in sides], cfg.reps)
                stats = dict(zip(sides, (Stat.of(v) for v in samples), strict=True))
                mode = "serial (one ack awaited at a time)" if window == 1 else f"{window} in flight"
                report.add(Row(f"publish rate, 3 nodes, replicas 3, {mode}", "msg/s", stats["R3 always"],
                               stats["R3 lazy"], "default lazy fsync", "higher",
                               note="1 KiB messages; weightflow side = sync_interval always"))
                report.add(Row(f"publish rate, one node, {mode}", "msg/s", stats["R1 always"], stats["R1 lazy"],
                               "default lazy fsync", "higher", note="the embedded default keeps the lazy default"))
            elected, written, seen = [], [], []
            for _ in range(1 if cfg.smoke else 3):
                e, w, errs = loop.run_until_complete(leader_loss(always))
                elected.append(e)
                written.append(w)
                seen.extend(errs)
            report.add(Row("SIGKILL of the stream leader -> new leader", "s", Stat.of(elected), better="lower",
                           note="from the kill to the new leader's leader_since"))
            report.add(Row("SIGKILL of the stream leader -> next acknowledged publish", "s", Stat.of(written),
                           better="lower", note="what the publisher saw meanwhile: " + ", ".join(
                               f"{n} x {name}" for name, n in sorted(Counter(seen).items()))))
        finally:
            for server in servers:
                server.stop()
            loop.close()
    report.notes.append("sync_interval always fsyncs every write before its ack on each replica; the lazy default "
                        "acks from memory on a quorum and fsyncs every 2 minutes")
    return report

