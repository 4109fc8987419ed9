"""The torch line: a task's spec is torch-free by construction, its runtime holds the model work.

Checked twice: no spec module imports a model library anywhere (not even inside a function), and a fresh
interpreter that validates every built-in task's spec, picks its routes and renders its prompts has not
imported one. Each built-in runtime is what its spec names, and does the work.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from weightflow.shared.modeling.protocols import TaskRuntime
from weightflow.shared.modeling.registry import tasks

ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = ROOT / "shared" / "modeling" / "tasks"
MODEL_LIBRARIES = {"torch", "transformers", "peft", "accelerate", "llmcompressor", "compressed_tensors", "awq",
                   "sentence_transformers"}
RUNTIME_SIDE = {"timing"}  # task modules on the runtime side besides the *_runtime ones
SPEC_MODULES = sorted(
    [p for p in TASKS_DIR.glob("*.py") if not p.stem.endswith("_runtime") and p.stem not in RUNTIME_SIDE]
    + [ROOT / "shared" / "modeling" / name for name in ("protocols.py", "registry.py", "length_buckets.py")])


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (function-local imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", SPEC_MODULES, ids=lambda p: p.stem)
def test_no_spec_module_imports_a_model_library_or_a_runtime(path: Path) -> None:
    names = imported(path)
    heavy = sorted(n for n in names if n.split(".")[0] in MODEL_LIBRARIES or n in MODEL_LIBRARIES)
    runtimes = sorted(n for n in names if n.rpartition(".")[2].endswith("_runtime")
                      or n.rpartition(".")[2] in RUNTIME_SIDE)
    assert not heavy, f"{path.name} imports {heavy}: model work belongs in a *_runtime module"
    assert not runtimes, f"{path.name} imports {runtimes}: a spec names its runtime in runtime_class instead"


def test_validating_every_builtin_task_imports_no_model_library() -> None:
    script = """
import sys
from weightflow.contracts.requirements import TaskSpec
from weightflow.shared.modeling.registry import tasks

for name in tasks.names():
    task = tasks.get(name)
    labels = {"a": "about a", "b": "about b"}
    spec = TaskSpec(type=name, labels=labels, prompt="Q: {input}\\nA:")
    task.check_spec(spec, task.metrics[0])
    task.check_rows(spec, task.metrics[0], "eval", [])
    task.serving_context(spec)
    for route in task.remote_routes:
        task.remote_route(spec, route)
        task.prompt_template(spec, route)
loaded = sorted(m for m in {"torch", "transformers", "peft", "accelerate"} if m in sys.modules)
print("LOADED", loaded)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr


def test_each_builtin_runtime_is_the_one_its_spec_names() -> None:
    builtin = [t for t in map(tasks.get, tasks.names()) if type(t).__module__.startswith("weightflow.")]
    assert len(builtin) >= 4
    for task in builtin:
        name = task.name
        runtime = task.runtime()
        assert isinstance(runtime, TaskRuntime) and runtime.task is task and runtime.name == name
        assert type(runtime).__module__.endswith("_runtime"), type(runtime).__module__
        assert task.runtime() is runtime  # made once


def test_model_work_on_a_spec_is_refused_when_the_class_is_made() -> None:
    """A plugin written for the one-class Task (its own `evaluate` on the spec) would be silently bypassed, since
    callers reach model work through runtime(): the class is refused instead, saying where the method goes."""
    from weightflow.shared.modeling.tasks.zero_shot import ZeroShotClassification

    with pytest.raises(TypeError, match=r"defines \['evaluate', 'load'\] on its spec.*TaskRuntime"):
        class OldStyle(ZeroShotClassification):
            def load(self, model_dir: object, device: object) -> None: ...

            def evaluate(self) -> None: ...

    class NoRuntime(ZeroShotClassification):
        runtime_class = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="names no runtime_class"):
        NoRuntime().runtime()
