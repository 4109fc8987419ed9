"""compose.yaml, the production deployment, checked without a container engine (these machines have none).

It is valid against the Compose Specification's JSON schema (vendored: tests/schemas/README.md says from which
commit); it runs every service of the topology (contracts/topology.py) with a health check on the endpoint the
service serves and a restart policy, after a one-shot `migrate` that upgrades the database; its three NATS nodes
mount exactly the files `weightflow nats-config --cluster-nodes` writes, and each service reads the credentials
file written for its own NATS user; every WEIGHTFLOW_* / OTEL_* setting it sets is one weightflow reads, with a
value weightflow accepts; and no volume is shared between services (artifacts go through the object store).

What the file relies on is exercised by real processes elsewhere: the cluster and its leaders dying
(tests/e2e/test_cluster.py), the generated accounts on a cluster and the artifact bucket under them
(tests/integration/test_nats_permissions.py), six services with no shared disk
(tests/e2e/test_shared_nothing.py), PostgreSQL and
`weightflow db upgrade` (tests/integration/test_migrations.py, the `postgres`-marked suites).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from weightflow.cli import app
from weightflow.contracts.topology import SERVICES
from weightflow.shared.settings import Settings

from ..conftest import ROOT
from ..settings_read import settings_weightflow_reads

SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"  # see tests/schemas/README.md
NODES = ("nats-1", "nats-2", "nats-3")
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?+][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the command in compose.yaml's header writes, in a scratch folder standing for ./nats."""
    folder = tmp_path_factory.mktemp("compose") / "nats"
    result = CliRunner().invoke(app, ["nats-config", "--out", str(folder / "nats-server.conf"), "--cluster-nodes",
                                      ",".join(NODES), "--store-dir", "/js"])
    assert result.exit_code == 0, result.output
    return folder


def services_of_topology(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: compose["services"][name] for name in SERVICES}


def interpolated(value: str) -> str:
    """`value` as compose would pass it, with each ${VAR...} given a stand-in value."""
    return INTERPOLATION.sub(lambda m: f"stand-in-{m.group(1).lower()}", value)


def test_compose_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256, "update tests/schemas/README.md"
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # the check has teeth: a misspelt key and a wrong type are refused
    broken = {**compose, "services": {**compose["services"], "registry": {**compose["services"]["registry"],
                                                                          "restart_policy": "always"}}}
    assert not validator.is_valid(broken)
    assert not validator.is_valid({**compose, "volumes": ["not", "a", "mapping"]})


def test_every_service_of_the_topology_runs_with_a_health_check_and_a_restart_policy(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, spec in services_of_topology(compose).items():
        assert spec["command"] == ["service", name]
        assert spec["restart"] in RESTART_POLICIES, name
        test = " ".join(spec["healthcheck"]["test"])
        url = urlsplit(re.findall(r"https?://[^'\" ]+", test)[0])
        assert url.path in ("/healthz", "/readyz"), "the endpoints shared/ops_server.py serves"
        assert str(url.port) == spec["environment"]["WEIGHTFLOW_OPS_PORT"], "the port the service serves them on"
        assert spec["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    # nothing else runs by default but the infrastructure
    default = {name for name, spec in services.items() if "profiles" not in spec}
    assert default == {*SERVICES, *NODES, "postgres", "migrate"}
    for name in (*NODES, "postgres"):
        assert services[name]["restart"] in RESTART_POLICIES and services[name]["healthcheck"]["test"], name


def test_migrate_upgrades_the_database_once_before_the_services(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert "weightflow db upgrade" in " ".join(migrate["command"])
    assert migrate["restart"] == "no"
    assert migrate["env_file"] == ["nats/admin.env"], "only the admin user may create the streams"
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert all(migrate["depends_on"][node] == {"condition": "service_healthy"} for node in NODES)


def test_the_nats_nodes_and_services_use_what_nats_config_generates(compose: dict[str, Any], generated: Path) -> None:
    services = compose["services"]
    mounted = {}
    for node in NODES:
        spec = services[node]
        [config] = [v.split(":") for v in spec["volumes"] if v.startswith("./nats/")]
        assert config[1] == spec["command"][spec["command"].index("-c") + 1], "the node runs the mounted config"
        mounted[node] = Path(config[0]).name
        node_config = json.loads("\n".join(line for line in (generated / mounted[node]).read_text().splitlines()
                                           if not line.startswith("#")))
        assert node_config["server_name"] == node
        assert node_config["jetstream"]["store_dir"] == "/js" and node_config_store(spec) == "/js"
        assert {urlsplit(r).hostname for r in node_config["cluster"]["routes"]} == set(NODES) - {node}
        assert node_config["cluster"]["authorization"]["user"] == "route"
        assert urlsplit(f"http://{node_config['listen']}").port == 4222 and node_config["http_port"] == 8222
    assert mounted == {node: f"{node}.conf" for node in NODES}

    for name, spec in services_of_topology(compose).items():
        assert spec["env_file"] == [f"nats/{name}.env"], "each service connects as its own NATS user"
        env = dict(line.split("=", 1) for line in (generated / f"{name}.env").read_text().splitlines())
        assert env["WEIGHTFLOW_DECLARE_STREAM"] == "false"
        urls = [urlsplit(u) for u in env["WEIGHTFLOW_NATS_URL"].split(",")]
        assert [(u.username, u.hostname, u.port) for u in urls] == [(name, node, 4222) for node in NODES]
    assert services["cli"]["env_file"] == ["nats/admin.env"] and (generated / "admin.env").exists()


def node_config_store(spec: dict[str, Any]) -> str:
    """Where the node's JetStream volume is mounted."""
    [store] = [str(v).split(":")[1] for v in spec["volumes"] if not str(v).startswith("./")]
    return store


def test_every_setting_it_sets_is_one_weightflow_reads_with_a_value_it_accepts(compose: dict[str, Any],
                                                                               generated: Path) -> None:
    reads = settings_weightflow_reads()
    prefix = str(Settings.model_config.get("env_prefix", ""))
    for name, spec in compose["services"].items():
        env: dict[str, str] = {k: interpolated(str(v)) for k, v in (spec.get("environment") or {}).items()}
        for env_file in spec.get("env_file", []):
            text = (generated / Path(env_file).name).read_text()
            env |= dict(line.split("=", 1) for line in text.splitlines())
        ours = {k: v for k, v in env.items() if k.startswith(("WEIGHTFLOW_", "OTEL_"))}
        assert not set(ours) - reads, f"{name} sets settings weightflow never reads: {sorted(set(ours) - reads)}"
        if name in SERVICES or name in ("migrate", "cli"):
            fields = {k.removeprefix(prefix).lower(): v for k, v in ours.items()
                      if k.removeprefix(prefix).lower() in Settings.model_fields}
            settings = Settings.model_validate(fields)  # refused here as a service would refuse it
            assert settings.artifact_backend == "nats" and settings.stream_replicas == 3, name
            assert settings.artifact_replicas == 3 and urlsplit(settings.resolved_database_url()).scheme \
                == "postgresql", name
            assert len(settings.resolved_nats_url().split(",")) == len(NODES), name


def test_no_volume_is_shared_between_services(compose: dict[str, Any]) -> None:
    owners: dict[str, list[str]] = {}
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            owners.setdefault(source, []).append(name)
    shared = {source: names for source, names in owners.items() if len(names) > 1}
    assert shared == {}, "artifacts go through the object store, not a shared disk"
    for name, spec in services_of_topology(compose).items():
        assert not spec.get("volumes"), f"{name} keeps only a cache in its own container"
    assert set(compose["volumes"]) == {source for source in owners if not source.startswith(".")}
