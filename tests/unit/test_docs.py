"""What is derived from the code must match it: the AsyncAPI document, the README's stage table, the declared
dependencies; and commands that run no model load no torch. (compose.yaml: tests/unit/test_compose.py.)"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from weightflow.contracts.topology import SERVICES, markdown_table, mermaid_flowchart

from ..conftest import ROOT
from ..settings_read import settings_weightflow_reads

CODE = ("contracts", "shared", "services", "weightflow")
# Runs in the quantization environment (its own pinned packages), never in the services' environment.
OTHER_ENVIRONMENT = ("shared/modeling/quantizers/llmcompressor_worker.py",)


def test_asyncapi_document_is_generated_from_the_code() -> None:
    from weightflow.asyncapi import document

    committed = (ROOT / "docs" / "asyncapi.yaml").read_text()
    assert document() == committed, "docs/asyncapi.yaml is stale: python -m weightflow.asyncapi > docs/asyncapi.yaml"
    for name in SERVICES:
        assert f"{name}:" in committed
    assert "RequirementsAccepted:" in committed and "wf.benchmark.variant_benchmarked" in committed


def test_readme_stage_table_is_the_topology() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README's table: print(contracts.topology.markdown_table())"


def test_commands_that_run_no_model_load_no_torch() -> None:
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    for command in (["status", "--help"], ["submit", "--help"], ["rollback", "--help"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "weightflow.cli", *command], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
        # What keeps the CLI quick is what it does not import (scipy.stats alone is ~1 s); a wall-clock bound
        # here only measured the machine's load.
        assert not imported & {"torch", "transformers", "peft", "accelerate", "sklearn", "scipy"}, command


def _third_party_imports() -> set[str]:
    names: set[str] = set()
    for folder in CODE:
        for path in (ROOT / folder).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() in OTHER_ENVIRONMENT:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    local = {*CODE, "bench", "tests"}
    return {n for n in names - local if n not in sys.stdlib_module_names}


def test_every_imported_package_is_declared() -> None:
    declared = {d.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower().replace("_", "-")
                for d in _project_dependencies()}
    distributions = packages_distributions()
    missing = []
    for module in sorted(_third_party_imports()):
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} (from {sorted(dists)})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def _project_dependencies() -> list[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def test_docs_name_files_that_exist() -> None:
    for doc in (ROOT / "README.md", ROOT / "docs" / "reliability.md"):
        for token in doc.read_text().split("`"):
            if token.startswith(("tests/", "docs/", "examples/")) and "::" not in token and " " not in token:
                assert (ROOT / token.rstrip("/")).exists() or "*" in token, f"{doc.name} names {token}"
    assert Path(ROOT / "docs" / "asyncapi.yaml").exists()


# Settings read by the code but deliberately not in the README, each with why. Empty: every setting so far,
# the test-only ones included, is documented (a reader meeting WEIGHTFLOW_CRASH_POINTS should learn what it is).
UNDOCUMENTED_SETTINGS: dict[str, str] = {}


def test_every_setting_weightflow_reads_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"(?<![A-Z0-9_])(?:WEIGHTFLOW|OTEL)_[A-Z0-9_]+", readme))
    missing = sorted(settings_weightflow_reads() - UNDOCUMENTED_SETTINGS.keys() - named)
    assert not missing, f"read by the code, not named in README.md (say what each does, its default): {missing}"
    assert {"WEIGHTFLOW_HOME", "WEIGHTFLOW_NATS_URL", "WEIGHTFLOW_CRASH_POINTS"} <= settings_weightflow_reads()


def test_the_architecture_page_draws_the_topology_the_code_declares() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert mermaid_flowchart() in page, (
        "docs/architecture.md's diagram is stale: print(contracts.topology.mermaid_flowchart()) and paste it")
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text().split("## Set up and run")[0], (
        "the README links the architecture page before anything else")
    for service in SERVICES:
        assert f"{service}[" in mermaid_flowchart()
