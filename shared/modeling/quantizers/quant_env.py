"""The quantization environment: llmcompressor in a virtual environment of its own.

llmcompressor 0.14 requires transformers <= 5.17 (and huggingface_hub < 2, and datasets, pandas,
pyarrow: about 0.3 GB more); the services run the current transformers. Rather than pin every service
to llmcompressor's narrow window, the 4-bit quantizers run it as a subprocess of this environment
(shared.modeling.quantizers.llmcompressor_worker); the services only need compressed-tensors to load
and serve what it writes (verified: the output is byte-identical and loads identically under 5.24).

    weightflow setup-quantization            # builds it (about a minute; needs PyPI)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PACKAGES = ("llmcompressor==0.14.0.1", "transformers==5.17.0", "compressed-tensors==0.19.0")
TORCH = "torch==2.13.0"  # installed first and alone, so pip takes the CPU wheel and never another torch


def default_location() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "weightflow" / "quant-env"


def python_in(location: Path) -> Path:
    return location / "bin" / "python"


def find(explicit: Path | None = None) -> Path | None:
    """The environment's interpreter: WEIGHTFLOW_QUANT_PYTHON, else the default location if built."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    candidate = python_in(default_location())
    return candidate if candidate.is_file() else None


def setup(location: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Create (or complete) the environment; returns its python. Idempotent."""
    location = location or default_location()
    python = python_in(location)
    if not python.is_file():
        log(f"creating {location}")
        subprocess.run([sys.executable, "-m", "venv", str(location)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    log(f"installing {TORCH}")
    subprocess.run([*pip, TORCH], check=True)
    log(f"installing {', '.join(PACKAGES)}")
    subprocess.run([*pip, *PACKAGES], check=True)
    subprocess.run([str(python), "-m", "pip", "check"], check=True, capture_output=True)
    return python
