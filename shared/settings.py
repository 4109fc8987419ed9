"""One settings object for every service and the CLI (env prefix WEIGHTFLOW_).

The embedded default needs no settings at all: data lives in ./.weightflow, NATS URL is read from the
file the embedded launcher writes, the database is a SQLite file. Point the same code at a cluster with
WEIGHTFLOW_NATS_URL and WEIGHTFLOW_DATABASE_URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

NATS_URL_FILE = "nats.url"
NATS_MONITOR_FILE = "nats-monitor.url"
# A service process that refuses to start (a database behind this release's schema, a setting it cannot use)
# exits with this code (sysexits' EX_CONFIG) and its supervisor does not restart it: it would only refuse again.
# Anything else a service exits with, the CLI's 2 for a user's bad input included, is a crash to restart.
REFUSED_TO_START_EXIT = 78


def split_urls(urls: str) -> list[str]:
    """A comma-separated list of URLs, blanks dropped."""
    return [u.strip() for u in urls.split(",") if u.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WEIGHTFLOW_", extra="ignore")

    home: Path = Path(".weightflow")
    # One URL, or a cluster's URLs comma-separated (nats://n1:4222,nats://n2:4222,...): clients start with whichever
    # answers and reconnect to the survivors when a node dies (they also learn the cluster's other nodes from it).
    nats_url: str | None = None
    # nats-server's HTTP monitoring endpoint (e.g. http://nats:8222): where `doctor` and `status` read whether
    # the JetStream store can be written; the embedded stack writes its own to a file beside nats.url. For a
    # cluster, every node's, comma-separated: `doctor` then lists the nodes and says which did not answer.
    nats_monitor_url: str | None = None
    database_url: str | None = None
    artifacts_dir: Path | None = None
    # Where artifacts live (shared.artifacts.open_store): "filesystem" under artifacts_dir, the embedded default, for
    # processes that share that disk; "nats" in a JetStream Object Store bucket replicated with the cluster, each
    # process keeping only a local cache in its own artifacts_dir (nothing shared but NATS and the database).
    artifact_backend: Literal["filesystem", "nats"] = "filesystem"
    artifact_bucket: str = Field("WF_ARTIFACTS", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Copies the bucket keeps (at most the cluster's size); unset, it follows stream_replicas.
    artifact_replicas: int | None = Field(None, ge=1, le=5)
    stream: str = "WF"
    # Copies JetStream keeps of each stream (and so of its consumers): 1 for the embedded single server, 3 on a
    # three-node cluster (a quorum of 2 acknowledges each write; one node may die). At most the cluster's size.
    stream_replicas: int = Field(1, ge=1, le=5)
    duplicate_window_s: float = 120.0
    ack_wait_s: float = 30.0
    # Deliveries before a failing event is dead-lettered; with the backoff (2, 4, 8, … capped at
    # retry_backoff_cap_s) the default rides out about five minutes of a locked database or a full disk.
    max_deliver: int = 10
    retry_backoff_cap_s: float = 60.0
    sweep_interval_s: float = 30.0
    # False where NATS permissions let services use the stream but not create it (shared.nats_auth):
    # the operator (admin user) creates it, e.g. with any `weightflow` CLI command.
    declare_stream: bool = True
    shutdown_grace_s: float = 20.0
    crash_points: str = ""  # tests only: comma-separated shared.bus crash points (mid_transaction, after_commit)
    device: str = "auto"
    canary_interval_s: float | None = None
    # Models the monitoring service keeps loaded between canaries, by manifest (0: load for every canary). A kept
    # model is still checked: every pinned file is verified before each canary, as loading would.
    canary_models_kept: int = Field(default=1, ge=0)
    scheduler_tick_s: float = 0.25  # an idle tick is one indexed read; a due canary waits at most this long
    otlp_endpoint: str | None = None
    # Operator endpoints (/metrics, /healthz, /readyz; shared.ops_server): off when None, a free port when 0
    # (announced under <home>/ops/targets/ for Prometheus and `weightflow doctor`). The embedded stack uses 0.
    ops_port: int | None = None
    ops_host: str = "127.0.0.1"
    metrics_interval_s: float = 5.0  # how often consumer lag and outbox depth are read for /metrics
    # A consumer with work waiting and none in hand for this long is bound again (shared.bus.stalls).
    consumer_stall_s: float = Field(30.0, gt=0, allow_inf_nan=False)
    # Extra modules to import at start (comma-separated): model sources, tasks, quantizers, tuners
    # registered by a team's own code (see shared.modeling.registry).
    plugins: str = ""
    # The quantization environment's python (llmcompressor; see shared.modeling.quantizers.quant_env);
    # default: the one `weightflow setup-quantization` built.
    quant_python: Path | None = None
    trace_file: bool = True
    # `weightflow serve`'s deadlines for slow clients (its --header-timeout, --body-timeout, --keep-alive-timeout):
    # a request's headers from the connection (or its first byte), its body once the headers are in, and the wait
    # for another request on an idle keep-alive connection. Without them, half a request held a socket forever.
    serve_header_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False)
    serve_body_timeout_s: float = Field(60.0, gt=0, allow_inf_nan=False)
    serve_keep_alive_s: int = Field(5, ge=1)

    def resolved_nats_url(self) -> str:
        if self.nats_url:
            return self.nats_url
        url_file = self.home / NATS_URL_FILE
        if url_file.exists():
            return url_file.read_text().strip()
        raise RuntimeError(
            f"no NATS server: set WEIGHTFLOW_NATS_URL or start the embedded stack with `weightflow up` "
            f"(it writes {url_file})"
        )

    def resolved_nats_servers(self) -> list[str]:
        """The NATS URL(s) as the list nats-py and faststream take: every server of a cluster."""
        return split_urls(self.resolved_nats_url())

    def resolved_nats_monitor_url(self) -> str | None:
        if self.nats_monitor_url:
            return self.nats_monitor_url
        monitor_file = self.home / NATS_MONITOR_FILE
        return monitor_file.read_text().strip() if monitor_file.exists() else None

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'weightflow.db').resolve()}"

    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.home / "artifacts").resolve()
