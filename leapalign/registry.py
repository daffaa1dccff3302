"""Name -> builder tables for everything a user extends, plugins, and the dotted-path fallback.

The library keeps one :class:`Registry` per extension point. All five are created at the end of this module,
which imports nothing heavy, with the built-in entries declared by import path and description (the one place
each description is written), so ``leapalign list`` answers without torch; each is re-exported next to the code
that uses it:

=====================================  ===============================================================
``leapalign.models.MODELS``            ``builder(cfg: ModelConfig) -> FlowModel``
``leapalign.rewards.REWARDS``          ``builder(**args) -> RewardFn`` (a class, or a plain function)
``leapalign.eval.EVALUATORS``          ``builder(**args) -> Evaluator``
``leapalign.data.PROMPT_SETS``         ``builder() -> list[dict]`` (entries with a ``prompt`` key)
``leapalign.regularizers.REPLAY_SOURCES``  ``builder(seed, batch_size, height, width) -> ReplaySource``
=====================================  ===============================================================

A name that is not registered but looks like an import path (``my_pkg.module:Object`` or
``my_pkg.module.Object``) is imported, so a user's own class works without registering it. Importing it runs
that module's code: :meth:`Registry.imports` tells, without importing anything, whether a name would be imported,
so that a config written by someone else can be checked before it is loaded (``--trust-config``).

A builder may be registered lazily, as the import path of the object with its description
(``REWARDS.register("laplacian", "my_pkg.rewards:Sharpness", "mean Laplacian magnitude")``):
:meth:`Registry.describe` and ``leapalign list`` then give the name and the description without importing the
module, which is imported the first time the name is resolved. A plugin that imports its registries from here and
registers import paths keeps ``leapalign list`` fast (ShapesWorld's does: ``leapalign.worlds.shapes.plugin``).

Plugins (whole worlds, or a lab's own models and rewards) register on import. They are found through the
``leapalign.plugins`` entry-point group of installed packages (each entry point names a function called with
no argument, or a module whose import registers), and through the config's ``plugins:`` list of modules or
``module:function`` paths. Entry points load the first time a registry misses a name, or lists its names.

Example:
    >>> from leapalign.rewards import REWARDS
    >>> REWARDS.register("sharpness", Sharpness, "mean Laplacian magnitude; no weights needed")
    >>> REWARDS.register("sharp2", "my_pkg.rewards:Sharpness", "the same, imported on first use")
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
    """One registered builder (or the import path of a lazily registered one) and its one-line description."""

    builder: T | str
    description: str

    def same(self, builder: T | str) -> bool:
        """``builder`` is this entry's builder, or the object its import path names: compared by the defining
        module and qualified name, without importing anything."""
        if builder is self.builder:
            return True
        paths = [b if isinstance(b, str) else _qualified_name(b) for b in (builder, self.builder)]
        return None not in paths and _canonical(paths[0]) == _canonical(paths[1])


class Registry(Generic[T]):
    """A table of named builders with a dotted-import-path fallback.

    Args:
        kind: What the registry holds, as a config key names it (``"model"``, ``"reward"``, ...); used in errors.
        key: The config key users set (``"model.name"``), named in errors.
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, builder: T | str, description: str = "", *, replace: bool = False) -> T | str:
        """Adds ``builder`` under ``name``; returns it.

        Args:
            name: The name configs use.
            builder: The builder, or its import path ``package.module:Object``, imported the first time ``name``
                is resolved (listing the registry does not import it).
            description: One line: what it is and what it needs.
            replace: Replace a different builder registered under ``name``.

        Raises:
            RegistryError: ``name`` is taken by another builder and ``replace`` is false, or ``builder`` is a
                string that is not an import path.
        """
        if isinstance(builder, str) and not looks_like_import_path(builder):
            raise RegistryError(f"{self.kind} {name!r}: {builder!r} is not an import path 'package.module:Object'.")
        old = self._entries.get(name)
        if old is not None and not replace and not old.same(builder):
            raise RegistryError(f"{self.kind} {name!r} is already registered; pass replace=True to override it.")
        if old is not None and old.description and not description and old.same(builder):
            description = old.description  # the object itself, registered again after its lazy declaration
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

    def imports(self, name: str) -> bool:
        """Whether :meth:`resolve` would import ``name`` as an import path that the caller gave, which runs that
        module's code: not registered (built-ins and installed plugins) but shaped like an import path. Nothing
        that ``name`` names is imported to tell (the installed entry-point plugins may load)."""
        return bool(name) and name not in self and looks_like_import_path(name)

    def resolve(self, name: str) -> T:
        """The builder registered as ``name`` (imported now if it was registered by import path), else the object
        at the import path ``name``.

        Raises:
            RegistryError: Neither registered nor importable; the message lists the registered names.
        """
        if name in self:
            entry = self._entries[name]
            if isinstance(entry.builder, str):
                builder = import_object(entry.builder, f"{self.kind} {name!r}")
                self._entries[name] = entry = Entry(builder, entry.description)
            return entry.builder  # type: ignore[return-value]
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


def _canonical(path: str) -> str:
    """``pkg.module.Object`` and ``pkg.module:Object`` as one spelling (the colon form)."""
    return path if ":" in path else ":".join(path.rsplit(".", 1))


def _qualified_name(obj: object) -> str | None:
    """``module:qualname`` of a module-level class or function, else ``None``."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname and "<" not in qualname else None


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


# The library's registries and its built-in entries. Builders are named by import path, so that listing imports
# nothing; the description written here is the only one (the builders' docstrings say how, not what is listed).

MODELS: Registry[Callable[..., Any]] = Registry("model", "model.name")
"""``model.name`` -> ``builder(cfg: ModelConfig) -> FlowModel`` (re-exported as ``leapalign.models.MODELS``)."""
MODELS.register(
    "tiny-flux", "leapalign.models:_tiny_flux", "random-init Flux-architecture model built in-process (tests, CPU)"
)
MODELS.register(
    "tiny-sd3", "leapalign.models:_tiny_sd3", "random-init SD3-architecture model built in-process (tests, CPU)"
)
MODELS.register(
    "flux", "leapalign.models:_flux", "FLUX.1 (dev layout) from model.path: a diffusers pipeline folder or hub id"
)
MODELS.register("sd3", "leapalign.models:_sd3", "SD3 / SD3.5 from model.path: a diffusers pipeline folder or hub id")
for _name, _module, _builder, _what in (
    ("flux2", "flux2", "flux2", "FLUX.2 [dev]"),
    ("flux2-klein", "flux2", "flux2_klein", "FLUX.2 [klein] (4B / 9B, distilled or base)"),
    ("qwen-image", "qwen_image", "qwen_image", "Qwen-Image"),
    ("z-image", "z_image", "z_image", "Z-Image (Turbo or base)"),
):
    MODELS.register(
        f"tiny-{_name}",
        f"leapalign.models.{_module}:build_tiny_{_builder}",
        f"random-init {_what}-architecture model built in-process (tests, CPU)",
    )
    MODELS.register(
        _name,
        f"leapalign.models.{_module}:build_{_builder}",
        f"{_what} from model.path: a diffusers pipeline folder or hub id",
    )

REWARDS: Registry[Callable[..., Any]] = Registry("reward", "reward.terms[].name")
"""``reward.terms[].name`` -> ``builder(**args) -> RewardFn`` (re-exported as ``leapalign.rewards.REWARDS``)."""
REWARDS.register("brightness", "leapalign.rewards.synthetic:Brightness", "mean pixel intensity; no weights needed")
REWARDS.register("saturation", "leapalign.rewards.synthetic:Saturation", "mean colour saturation; no weights needed")
REWARDS.register(
    "target_color",
    "leapalign.rewards.synthetic:TargetColor",
    "closeness to one colour (args: color); no weights needed",
)
REWARDS.register(
    "prompt_color",
    "leapalign.rewards.synthetic:PromptColor",
    "closeness to the prompt's colour word; no weights needed",
)
REWARDS.register(
    "png_compressibility",
    "leapalign.rewards.synthetic:PngCompressibility",
    "negative PNG size in kB; NOT differentiable",
)
REWARDS.register(
    "hpsv2",
    "leapalign.rewards:_HPSV2",
    "HPSv2.1 (default) / HPSv2.0 human preference score, cosine ~0.2-0.4; needs HPS_v2.1_compressed.pt "
    "(hub xswu/HPSv2; args: checkpoint, version, tokenizer) and a CLIP tokenizer "
    "(laion/CLIP-ViT-H-14-laion2B-s32B-b79K); no OpenCLIP needed",
)
REWARDS.register(
    "pickscore",
    "leapalign.rewards:_PICKSCORE",
    "PickScore, logit_scale * cosine ~18-24; needs yuvalkirstain/PickScore_v1 and the processor "
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K (folders or hub ids; args: model, processor, scale)",
)
REWARDS.register(
    "clip_score",
    "leapalign.rewards:_CLIP_SCORE",
    "CLIP image-prompt cosine; needs any transformers CLIP folder or hub id "
    "(default openai/clip-vit-large-patch14; args: model, scale)",
)
REWARDS.register(
    "aesthetic",
    "leapalign.rewards:_AESTHETIC",
    "LAION aesthetic predictor v2, ~1-10, prompt ignored; needs sac+logos+ava1-l14-linearMSE.pth "
    "(args: head) and openai/clip-vit-large-patch14 (args: clip_model)",
)
REWARDS.register(
    "image_reward",
    "leapalign.rewards:_IMAGE_REWARD",
    "ImageReward (BLIP), ~-2..2; needs the `image-reward` package (pip install image-reward) and "
    "THUDM/ImageReward weights (args: model, med_config)",
)
REWARDS.register(
    "hpsv3",
    "leapalign.rewards:_hpsv3",
    "NOT SUPPORTED: HPSv3 is a Qwen2-VL-7B reward model; wrap its `hpsv3` package as a dotted-path reward "
    "(see docs/rewards.md)",
)

EVALUATORS: Registry[Callable[..., Any]] = Registry("evaluator", "evaluation.evaluators[].name")
"""``evaluation.evaluators[].name`` -> ``builder(**args) -> Evaluator`` (re-exported as
``leapalign.eval.EVALUATORS``)."""

PROMPT_SETS: Registry[Callable[[], Any]] = Registry("prompt set", "data.prompts")
"""``data.prompts`` -> ``builder() -> list`` of prompt strings or entries with a ``prompt`` key (re-exported as
``leapalign.data.PROMPT_SETS``)."""
PROMPT_SETS.register("builtin:tiny", "leapalign.data.prompts:_tiny_prompts", "8 short prompts for smoke tests")
PROMPT_SETS.register(
    "builtin:eval32",
    "leapalign.data.prompts:_eval32_prompts",
    "32 evaluation prompts written for leapalign in HPDv2's style (photo, anime, concept art, painting)",
)

REPLAY_SOURCES: Registry[Callable[..., Any]] = Registry("replay source", "train.replay_source")
"""``train.replay_source`` -> ``builder(seed, batch_size, height, width) -> ReplaySource`` (re-exported as
``leapalign.regularizers.REPLAY_SOURCES``)."""
