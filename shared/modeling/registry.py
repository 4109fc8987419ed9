"""Registries of the model layer's seams: candidate sources, tasks, quantizers, tuners.

Each implementation is one module that calls `register` on import; services look implementations up
by name and never branch on one. The built-in modules are imported on first lookup; a team's own
modules are named in WEIGHTFLOW_PLUGINS (or the `weightflow.plugins` entry-point group) and imported
at start, so a service picks them up without being edited. Importing this module imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from weightflow.shared.modeling.protocols import CandidateSource, Quantizer, Task, Tuner

T = TypeVar("T")

BUILTIN_MODULES = (
    "weightflow.shared.modeling.sources.builtin",
    "weightflow.shared.modeling.sources.path",
    "weightflow.shared.modeling.sources.hf_cache",
    "weightflow.shared.modeling.sources.api",
    "weightflow.shared.modeling.tasks.zero_shot",
    "weightflow.shared.modeling.tasks.text_classification",
    "weightflow.shared.modeling.tasks.generation",
    "weightflow.shared.modeling.tasks.multiple_choice",
    "weightflow.shared.modeling.quantizers.int8",
    "weightflow.shared.modeling.quantizers.compressed",
    "weightflow.shared.modeling.tuners.lora",
)
_loaded: set[str] = set()


class UnknownNameError(LookupError):
    """A name no registered implementation has; the message lists the ones that exist."""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise RuntimeError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        load_builtins()
        if name not in self._items:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._items)


sources: Registry[CandidateSource] = Registry("candidate source")
tasks: Registry[Task] = Registry("task")
quantizers: Registry[Quantizer] = Registry("quantization scheme")
tuners: Registry[Tuner] = Registry("tuning method")


def load_modules(names: Iterable[str]) -> None:
    for name in names:
        name = name.strip()
        if name and name not in _loaded:
            _loaded.add(name)  # first, so a module that looks something up while it registers does not recurse
            try:
                importlib.import_module(name)
            except BaseException:
                _loaded.discard(name)
                raise


def load_builtins() -> None:
    load_modules(BUILTIN_MODULES)


class PluginError(ImportError):
    """A team's plugin module that cannot be imported: said in one line naming the module and where it was named,
    not as an import traceback from deep inside a service's start."""


def load_plugins(spec: str = "") -> None:
    """Import the team's own implementations: a comma-separated module list and installed entry points."""
    load_builtins()
    for where, names in (("WEIGHTFLOW_PLUGINS", spec.split(",")),
                         ("the entry point group weightflow.plugins",
                          [ep.value for ep in entry_points(group="weightflow.plugins")])):
        for name in names:
            try:
                load_modules([name])
            except ImportError as exc:
                missing = f"it needs {exc.name!r}, which is not installed" if exc.name and exc.name != name.strip() \
                    else "no such module (install it, or put its folder on PYTHONPATH)"
                raise PluginError(f"{where} names {name.strip()!r}, which cannot be imported: {missing}") from exc
