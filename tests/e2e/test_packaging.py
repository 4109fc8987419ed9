"""weightflow installs as one top-level package: a user's own `shared`, `contracts` or `services` (where their
plugins live, beside weightflow) neither shadows nor is shadowed by weightflow's.

The repository keeps the design's top-level folders (contracts/, shared/, services/); `weightflow/contracts`,
`weightflow/shared` and `weightflow/services` are links to them, so the code imports them as `weightflow.*`
everywhere and the wheel holds them under `weightflow/`.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from weightflow.shared.natsd import EmbeddedNats

from ..conftest import ROOT, wait_served

GENERIC = {"contracts", "shared", "services"}
SOURCES = ("contracts", "shared", "services", "weightflow", "bench", "tests", "examples")
LINKS = {("weightflow", name) for name in GENERIC}


def test_no_module_imports_weightflow_code_by_a_generic_top_level_name() -> None:
    """In a checkout `shared` also imports (the repository root is on the path): a module that did so would load
    a second copy of every class beside `weightflow.shared`'s, and fail only where the wheel is installed."""
    found = []
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            if path.relative_to(ROOT).parts[:2] in LINKS:  # the same files, read once under their own folder
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in GENERIC]
    assert not found, found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.e2e
def test_the_wheel_installs_beside_a_package_named_shared(tmp_path: Path) -> None:
    """The wheel, installed into a clean environment that already holds packages named `shared` and `contracts`:
    its only top-level package is `weightflow`; `weightflow --help` runs, and a service starts and is ready."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("weightflow-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"weightflow"}, tops
    assert {"weightflow/shared/settings.py", "weightflow/contracts/base.py", "weightflow/services/registry/app.py",
            "weightflow/shared/migrations/env.py"} <= names
    # the sdist holds the linked folders' files too: a wheel built from it (what `pip install` of the sdist does)
    # holds the same files as the one built from the tree
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path / "sdist"), str(ROOT)],
                   check=True, capture_output=True)
    sdist = next((tmp_path / "sdist").glob("weightflow-*.tar.gz"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "from-sdist"),
                    str(sdist)], check=True, capture_output=True)
    rebuilt = set(zipfile.ZipFile(next((tmp_path / "from-sdist").glob("weightflow-*.whl"))).namelist())
    code = {n for n in names if not n.endswith(("RECORD", ".pyc"))}
    assert code - rebuilt == set() and not any(n.endswith(".pyc") for n in rebuilt), sorted(code - rebuilt)[:10]

    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # weightflow's dependencies from this environment's site-packages (a path line, so the editable install's own
    # .pth there, which puts this checkout on the path, is not read); the user's packages in the new one.
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_dependencies.pth").write_text("\n".join(sorted(outer)) + "\n")
    for name in ("shared", "contracts"):
        (site / name).mkdir()
        (site / name / "__init__.py").write_text(f"OWNER = 'a user of weightflow: {name}'\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEIGHTFLOW_", "PYTHON"))}

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    checked = run(python, "-c", (
        "import weightflow.cli, weightflow.shared.settings, shared, contracts, importlib.util as u\n"
        "assert shared.OWNER.endswith('shared') and contracts.OWNER.endswith('contracts')\n"
        "assert u.find_spec('services') is None\n"
        "import weightflow.shared as ws; print(ws.__file__)"))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip().startswith(str(site / "weightflow")), checked.stdout
    helped = run(env_dir / "bin" / "weightflow", "--help")
    assert helped.returncode == 0 and "service" in helped.stdout, helped.stderr

    with EmbeddedNats(tmp_path / "nats") as nats:
        port = free_port()
        service_env = env | {"WEIGHTFLOW_HOME": str(tmp_path / "home"), "WEIGHTFLOW_NATS_URL": nats.url,
                             "WEIGHTFLOW_OPS_PORT": str(port), "WEIGHTFLOW_TRACE_FILE": "false"}
        log = (tmp_path / "service.log").open("w")
        proc = subprocess.Popen([env_dir / "bin" / "weightflow", "service", "requirements"], cwd=tmp_path,
                                env=service_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_served(proc, f"http://127.0.0.1:{port}", log=tmp_path / "service.log")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
