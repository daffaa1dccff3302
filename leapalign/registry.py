"""Name -> builder tables for everything a user extends, plugins, and the dotted-path fallback.

The library keeps one :class:`Registry` per extension point, next to the code that uses it:

=====================================  ===============================================================
``leapalign.models.MODELS``            ``builder(cfg: ModelConfig) -> FlowModel``
``leapalign.rewards.REWARDS``          ``builder(**args) -> RewardFn`` (a class, or a plain function)
``leapalign.eval.EVALUATORS``          ``builder(**args) -> Evaluator``
``leapalign.data.PROMPT_SETS``         ``builder() -> list[dict]`` (entries with a ``prompt`` key)
``leapalign.regularizers.REPLAY_SOURCES``  ``builder(seed, batch_size, height, width) -> ReplaySource``
=====================================  ===============================================================

A name that is not registered but looks like an import path (``my_pkg.module:Object`` or
``my_pkg.module.Object``) is imported, so a user's own class works without registering it.

Plugins (whole worlds, or a lab's own models and rewards) register on import. They are found through the
``leapalign.plugins`` entry-point group of installed packages (each entry point names a function called with
no argument, or a module whose import registers), and through the config's ``plugins:`` list of modules or
``module:function`` paths. Entry points load the first time a registry misses a name, or lists its names.

Example:
    >>> from leapalign.rewards import REWARDS
    >>> REWARDS.register("sharpness", Sharpness, "mean Laplacian magnitude; no weights needed")
    >>> REWARDS.resolve("sharpness")            # -> Sharpness
    >>> REWARDS.resolve("my_pkg.rewards:Mine")  # -> imported on the fly
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "leapalign.plugins"
T = TypeVar("T", bound=Callable[..., Any])

_loaded_plugins: set[str] = set()
_entry_points_loaded = False


class RegistryError(ValueError):
    """An unknown name, a failed plugin, or a name registered twice; the message lists what is registered."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered builder and its one-line description (what it is, what it needs)."""

    builder: T
    description: str


class Registry(Generic[T]):
    """A table of named builders with a dotted-import-path fallback.

    Args:
        kind: What the registry holds, as a config key names it (``"model"``, ``"reward"``, ...); used in errors.
        key: The config key users set (``"model.name"``), named in errors.
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, builder: T, description: str = "", *, replace: bool = False) -> T:
        """Adds ``builder`` under ``name``; returns it.

        Raises:
            RegistryError: ``name`` is taken and ``replace`` is false.
        """
        if name in self._entries and not replace and self._entries[name].builder is not builder:
            raise RegistryError(f"{self.kind} {name!r} is already registered; pass replace=True to override it.")
        self._entries[name] = Entry(builder, description)
        return builder

    def __contains__(self, name: object) -> bool:
        if name in self._entries:
            return True
        load_entry_point_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_entry_point_plugins()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        load_entry_point_plugins()
        return len(self._entries)

    def names(self) -> list[str]:
        """Every registered name, sorted (plugins loaded first)."""
        return list(self)

    def describe(self) -> dict[str, str]:
        """``{name: description}`` of every registered builder."""
        return {n: self._entries[n].description for n in self}

    def is_known(self, name: str) -> bool:
        """Registered, or shaped like an import path (which :meth:`resolve` will try to import)."""
        return name in self or looks_like_import_path(name)

    def resolve(self, name: str) -> T:
        """The builder registered as ``name``, else the object at the import path ``name``.

        Raises:
            RegistryError: Neither registered nor importable; the message lists the registered names.
        """
        if name in self:
            return self._entries[name].builder
        if looks_like_import_path(name):
            try:
                return import_object(name, self.kind)
            except RegistryError as err:
                raise RegistryError(f"{self.unknown(name)} (tried it as an import path: {err})") from err
        raise RegistryError(self.unknown(name))

    def unknown(self, name: str) -> str:
        """The error message for an unknown ``name``: what is registered and how to add to it."""
        return (
            f"{self.key}={name!r}: unknown {self.kind}; registered: {', '.join(self.names()) or '(none)'}; or give "
            f"an import path such as 'my_pkg.module:Object', or load the plugin that defines it (config key "
            f"plugins, or the {ENTRY_POINT_GROUP!r} entry-point group; see docs/plugins.md)"
        )


def looks_like_import_path(name: str) -> bool:
    """``pkg.module:Object`` or ``pkg.module.Object`` (no path separators, no spaces)."""
    module, sep, attr = name.partition(":")
    if not sep:
        module, _, attr = name.rpartition(".")
    return (
        bool(module and attr)
        and "/" not in name
        and " " not in name
        and not name.endswith((".txt", ".json", ".jsonl", ".yaml", ".yml", ".csv"))
    )


def import_object(path: str, kind: str = "object") -> Any:
    """Imports ``pkg.module:Object`` or ``pkg.module.Object``.

    Raises:
        RegistryError: The module or the attribute cannot be imported.
    """
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise RegistryError(f"cannot import {kind} {path!r} ({err}); give 'package.module:Object'.") from err


def load_plugin(spec: str) -> None:
    """Loads one plugin: a module (registers on import) or ``module:function`` (called with no argument).

    Loading the same plugin twice does nothing.

    Raises:
        RegistryError: It cannot be imported, or its function fails.
    """
    if spec in _loaded_plugins:
        return
    module_name, _, func = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RegistryError(
            f"plugin {spec!r} cannot be imported ({err}); check the name and that it is installed."
        ) from err
    if func:
        fn = getattr(module, func, None)
        if not callable(fn):
            raise RegistryError(f"plugin {spec!r}: {module_name} has no function {func!r}.")
        fn()
    _loaded_plugins.add(spec)
    logger.debug("loaded plugin %s", spec)


def load_plugins(specs: Sequence[str]) -> None:
    """Loads the config's ``plugins:`` list (see :func:`load_plugin`), after the entry-point plugins."""
    load_entry_point_plugins()
    for spec in specs:
        load_plugin(spec)


def load_entry_point_plugins() -> None:
    """Loads every plugin of the ``leapalign.plugins`` entry-point group, once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # set first: a plugin's own registry lookups must not recurse
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        load_plugin(ep.value)
