"""Hostile requirements files through the real CLI: every one refused with a one-paragraph error and exit
code 2, never a traceback, and no file outside the requirements file's folder is read or stored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ..conftest import EXAMPLE_DIR, ROOT

SECRET = "wf-secret-line-that-must-not-leak"


def example(tmp_path: Path) -> Path:
    folder = tmp_path / "team"
    shutil.copytree(EXAMPLE_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return folder


def replace(folder: Path, old: str, new: str) -> None:
    doc = folder / "requirements.yaml"
    text = doc.read_text()
    assert old in text, old
    doc.write_text(text.replace(old, new))


def outside_file(tmp_path: Path) -> Path:
    """A perfectly valid eval set, outside the requirements folder: it must not be read or uploaded."""
    secret = tmp_path / "outside" / "eval.jsonl"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text(f'{{"id": "x", "text": "{SECRET}", "label": "billing"}}\n')
    return secret


def escape_dotdot(folder: Path, tmp_path: Path) -> None:
    outside_file(tmp_path)
    replace(folder, "eval: eval.jsonl", "eval: ../outside/eval.jsonl")


def escape_absolute(folder: Path, tmp_path: Path) -> None:
    replace(folder, "eval: eval.jsonl", f"eval: {outside_file(tmp_path)}")


def escape_symlink(folder: Path, tmp_path: Path) -> None:
    (folder / "eval.jsonl").unlink()
    (folder / "eval.jsonl").symlink_to(outside_file(tmp_path))


def escape_symlinked_folder(folder: Path, tmp_path: Path) -> None:
    outside_file(tmp_path)
    (folder / "data").symlink_to(tmp_path / "outside")
    replace(folder, "eval: eval.jsonl", "eval: data/eval.jsonl")


def proc_environ(folder: Path, tmp_path: Path) -> None:
    (folder / "eval.jsonl").unlink()
    (folder / "eval.jsonl").symlink_to("/proc/self/environ")


def a_directory(folder: Path, tmp_path: Path) -> None:
    (folder / "eval.jsonl").unlink()
    (folder / "eval.jsonl").mkdir()


def huge_yaml(folder: Path, tmp_path: Path) -> None:
    with (folder / "requirements.yaml").open("a") as fh:
        fh.write("# " + "x" * (50 * 1024 * 1024) + "\n")


def nested_yaml(folder: Path, tmp_path: Path) -> None:
    (folder / "requirements.yaml").write_text("name: " + "[" * 50_000 + "]" * 50_000 + "\n")


def yaml_bomb(folder: Path, tmp_path: Path) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    (folder / "requirements.yaml").write_text("\n".join(lines) + "\nname: *i\n")


def not_utf8(folder: Path, tmp_path: Path) -> None:
    (folder / "requirements.yaml").write_bytes(b"name: caf\xe9\n" + (folder / "requirements.yaml").read_bytes())


def one_huge_line(folder: Path, tmp_path: Path) -> None:
    with (folder / "eval.jsonl").open("a") as fh:
        fh.write('{"id": "big", "text": "' + "y" * (100 * 1024 * 1024) + '", "label": "billing"}\n')


def one_long_line(folder: Path, tmp_path: Path) -> None:
    with (folder / "eval.jsonl").open("a") as fh:
        fh.write('{"id": "long", "text": "' + "y" * (1024 * 1024) + '", "label": "billing"}\n')


def binary_eval(folder: Path, tmp_path: Path) -> None:
    (folder / "eval.jsonl").write_bytes(os.urandom(4096))


def pickle_candidate(folder: Path, tmp_path: Path) -> None:
    model = folder / "models" / "pickled"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04\x95" + os.urandom(64))
    replace(folder, "candidates: [minilm-l3, minilm-l6]", "candidates: [minilm-l3, {path: models/pickled}]")


def missing_hf(folder: Path, tmp_path: Path) -> None:
    replace(folder, "candidates: [minilm-l3, minilm-l6]", "candidates: [minilm-l3, {hf: nobody/nothing}]")


def remote_code(folder: Path, tmp_path: Path) -> None:
    from tests.plugins.scripted import make_checkpoint

    model = make_checkpoint(folder / "models" / "evil", "evil")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_evil.py").write_text("raise SystemExit('ran')\n")
    replace(folder, "candidates: [minilm-l3, minilm-l6]", "candidates: [{path: models/evil}]")


def mismatched_labels(folder: Path, tmp_path: Path) -> None:
    from tests.unit.test_byo_models import tiny_classifier

    tiny_classifier(folder / "models" / "head", labels=("positive", "negative"))
    replace(folder, "type: zero-shot-classification", "type: text-classification")
    replace(folder, "candidates: [minilm-l3, minilm-l6]", "candidates: [{path: models/head}]")


def candidate_escape(folder: Path, tmp_path: Path) -> None:
    replace(folder, "candidates: [minilm-l3, minilm-l6]", "candidates: [{path: ../../..}]")


CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "dotdot": (escape_dotdot, "leaves the requirements file's folder"),
    "absolute": (escape_absolute, "relative to the requirements file"),
    "symlink": (escape_symlink, "outside the requirements file's folder"),
    "symlinked folder": (escape_symlinked_folder, "outside the requirements file's folder"),
    "/proc/self/environ": (proc_environ, "outside the requirements file's folder"),
    "a directory": (a_directory, "not a regular file"),
    "50 MB yaml": (huge_yaml, "cap"),
    "nested yaml": (nested_yaml, "nest"),
    "yaml bomb": (yaml_bomb, "expands to more than"),
    "not utf-8": (not_utf8, "not UTF-8"),
    "one 100 MB line": (one_huge_line, "over the 67108864-byte cap"),
    "one 1 MB line": (one_long_line, "longer than 65536 bytes"),
    "binary eval": (binary_eval, "data.eval"),
    "pickle checkpoint": (pickle_candidate, "pickle weights"),
    "missing hf id": (missing_hf, "not in the local Hugging Face cache (looked for"),
    "remote code": (remote_code, "names its own model code (auto_map"),
    "mismatched labels": (mismatched_labels, "the checkpoint's labels ['negative', 'positive'] are not task labels"),
    "candidate escape": (candidate_escape, "leaves the requirements file's folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_requirements_are_refused_plainly(case: str, tmp_path: Path) -> None:
    make, expected = CASES[case]
    folder = example(tmp_path)
    make(folder, tmp_path)
    home = tmp_path / "home"
    env = dict(os.environ, WEIGHTFLOW_HOME=str(home), HF_HUB_CACHE=str(tmp_path / "hf-cache"),
               WEIGHTFLOW_NATS_URL="nats://127.0.0.1:1")  # nothing may be published: there is no server
    proc = subprocess.run([sys.executable, "-m", "weightflow.cli", "submit", str(folder / "requirements.yaml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert expected in " ".join(said.split()), said[-3000:]
    assert SECRET not in said and "PATH=" not in said
    stored = list((home / "artifacts" / "objects").rglob("*")) if (home / "artifacts").exists() else []
    assert not [p for p in stored if p.is_file()], "nothing is stored before everything is valid"
