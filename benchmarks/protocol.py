"""The benchmark protocol file (``benchmarks/protocol.yaml``): parsing, the cells of each suite, their configs.

A *cell* is ``(suite, variant, seed)``. Its leapalign config is ``base_config`` + ``common`` + the variant's
overrides + ``run.seed``; the evaluation section fixes the held-out evaluation. The *config hash* of a cell
covers the whole resolved config (except bookkeeping such as ``run.output_dir``) and the evaluation protocol,
so a finished cell is recognised as stale when the protocol or the base config changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from benchmarks.common import ROOT

DEFAULT_PROTOCOL = ROOT / "benchmarks" / "protocol.yaml"
SUITES = ("methods", "ablations")
BASE = "base"
SHORTHANDS = ("method", "model", "reward")
# Bookkeeping keys that do not change what a cell computes; left out of the config hash.
VOLATILE_RUN_KEYS = (
    "output_dir",
    "resume",
    "resume_or_start",
    "dist_timeout_s",
    "trackers",
    "tracker_project",
    "tracker_kwargs",
    "overwrite",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "tensorboard",
    "export",
)
# Options added to the library after cells were recorded, with the default that reproduces those cells: left out
# of the config hash while they hold it, so a new option does not make every finished cell stale.
LATER_DEFAULTS: dict[str, object] = {
    "reward.combine": "sum",
    # the world-agnostic core (issue 14): ShapesWorld became a plugin, its prompt balancing and evaluator explicit
    "plugins": [],
    "data.balance_by": "tag",
    "evaluation.every_n_steps": 0,
    "evaluation.limit": None,
    "evaluation.rewards": [],
    "evaluation.curve_images_per_prompt": None,  # proxy-versus-gold curves during training (issue 16)
    "evaluation.evaluators": [{"name": "shapes_eval", "args": {}}],
    "model.text_encoder_device": None,  # issue 18
}
RENAMED_DEFAULTS: dict[str, tuple[object, object]] = {
    # issue 18: a null model.lora_targets means the family's default; for the models of the studies that is the list
    # every earlier config spelled out, so the hash sees the list
    "model.lora_targets": (None, ["to_q", "to_k", "to_v", "to_out.0"]),
}
TOP_KEYS = {"base_config", "common", "evaluation", "seeds", "ablation_seeds", "methods", "ablations"}


class ProtocolError(ValueError):
    """The protocol file is malformed; the message names the key and the fix."""


@dataclass
class EvalProtocol:
    """Held-out evaluation of every cell (see the ``evaluation`` section of the protocol file)."""

    prompts: str = "shapes:eval"
    images_per_prompt: int = 4
    num_steps: int = 25
    seed: int = 0
    prompts_per_category: int | None = None
    curve_every: int = 50
    curve_images_per_prompt: int = 2

    def __post_init__(self) -> None:
        if self.images_per_prompt < 2 or self.curve_images_per_prompt < 2:
            raise ProtocolError("evaluation.images_per_prompt and curve_images_per_prompt must be >= 2 (diversity).")
        if self.curve_images_per_prompt > self.images_per_prompt:
            raise ProtocolError("evaluation.curve_images_per_prompt must not exceed evaluation.images_per_prompt.")
        if self.curve_every < 0:
            raise ProtocolError("evaluation.curve_every must be >= 0 (0: no intermediate evaluations).")


@dataclass
class Cell:
    """One benchmark cell: a variant of a suite at one seed (``seed`` is ``None`` for the base model)."""

    suite: str
    variant: str
    seed: int | None
    method: str
    group: str | None
    overrides: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.suite, self.variant, self.seed)

    @property
    def is_base(self) -> bool:
        return self.variant == BASE

    def run_dir(self, runs_root: Path) -> Path:
        return runs_root / BASE if self.is_base else runs_root / self.suite / self.variant / f"seed{self.seed}"

    def label(self) -> str:
        return BASE if self.is_base else f"{self.suite}/{self.variant}/seed{self.seed}"


def format_override(key: str, value: Any) -> str:
    """A protocol ``key: value`` pair as a leapalign ``key=value`` override (strings quoted, YAML-safe)."""
    if key in SHORTHANDS:
        return f"{key}={value}"
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if isinstance(value, (int, float)):
        return f"{key}={value!r}"
    return f"{key}={json.dumps(value, separators=(',', ':'))}"


def _overrides(mapping: Any, where: str) -> list[str]:
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        raise ProtocolError(f"{where} must be a mapping of leapalign keys to values, got {type(mapping).__name__}.")
    # `method=NAME` first: the shorthand resets the method section, later method.* keys refine it.
    items = sorted(mapping.items(), key=lambda kv: kv[0] not in SHORTHANDS)
    return [format_override(str(k), v) for k, v in items]


@dataclass
class Protocol:
    """A parsed protocol file."""

    path: Path
    base_config: str
    common: list[str]
    evaluation: EvalProtocol
    seeds: list[int]
    methods: dict[str, dict[str, Any]]
    ablations: dict[str, dict[str, list[str]]]
    ablation_seeds: list[int] | None = None  # the ablations' own seeds; None: ``seeds``

    def suite_seeds(self, suite: str) -> list[int]:
        """The seeds of ``suite``: ``ablation_seeds`` for the ablations when the protocol sets them, else ``seeds``."""
        return self.ablation_seeds if suite == "ablations" and self.ablation_seeds else self.seeds

    # ------------------------------------------------------------------------------------------- cells
    def cells(self, suite: str) -> list[Cell]:
        """Every cell of ``suite``, seed-major (all variants at the first seed first); ``methods`` starts
        with the base-model evaluation."""
        if suite not in SUITES:
            raise ProtocolError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}.")
        out: list[Cell] = []
        if suite == "methods":
            out.append(Cell("methods", BASE, None, BASE, None, []))
        for seed in self.suite_seeds(suite):
            if suite == "methods":
                for name, spec in self.methods.items():
                    method = _method_name(spec["overrides"]) or "leapalign"
                    out.append(Cell(suite, name, seed, method, None, self._with_inherited(spec)))
            else:
                for group, variants in self.ablations.items():
                    for name, overrides in variants.items():
                        out.append(Cell(suite, name, seed, "leapalign", group, list(overrides)))
        return out

    def _with_inherited(self, spec: dict[str, Any]) -> list[str]:
        overrides = list(spec["overrides"])
        if spec["inherit"]:
            base_method = self.load([]).method
            for key in spec["inherit"]:
                if not hasattr(base_method, key):
                    raise ProtocolError(f"inherit: the base config's method has no option {key!r}.")
                overrides.append(format_override(f"method.{key}", getattr(base_method, key)))
        return overrides

    # ------------------------------------------------------------------------------------------ configs
    def eval_overrides(self) -> list[str]:
        e = self.evaluation
        return [
            "evaluation.enabled=false",  # the runner evaluates itself (base once, checkpoints, diversity)
            format_override("evaluation.prompts", e.prompts),
            f"evaluation.images_per_prompt={e.images_per_prompt}",
            f"evaluation.num_steps={e.num_steps}",
            f"evaluation.seed={e.seed}",
        ]

    def overrides_for(self, cell: Cell) -> list[str]:
        """The leapalign overrides of ``cell`` (without run bookkeeping)."""
        seed = [] if cell.seed is None else [f"run.seed={cell.seed}"]
        return [*self.common, *self.eval_overrides(), *cell.overrides, *seed]

    def load(self, extra: list[str]) -> Any:
        """``load_config(base_config, common + evaluation + extra)``."""
        from leapalign.config import load_config

        return load_config(self.base_config, [*self.common, *self.eval_overrides(), *extra])

    def config_for(self, cell: Cell, run_dir: Path, bookkeeping: list[str] = ()) -> Any:
        """The resolved :class:`leapalign.config.ExperimentConfig` of ``cell`` writing to ``run_dir``."""
        from leapalign.config import load_config

        return load_config(self.base_config, [*self.overrides_for(cell), f"run.output_dir={run_dir}", *bookkeeping])

    def config_hash(self, cell: Cell) -> str:
        """Hash of the resolved config (bookkeeping keys removed) and the evaluation protocol."""
        from leapalign.config import to_yaml

        cfg = OmegaConf.create(to_yaml(self.config_for(cell, Path("unused"))))
        for key in VOLATILE_RUN_KEYS:
            cfg.run.pop(key, None)
        for dotted, default in LATER_DEFAULTS.items():
            section, _, key = dotted.rpartition(".")
            node = OmegaConf.select(cfg, section) if section else cfg
            if node is not None and key in node and node.get(key) == default:
                node.pop(key)
        for dotted, (new, old) in RENAMED_DEFAULTS.items():
            section, _, key = dotted.rpartition(".")
            node = OmegaConf.select(cfg, section) if section else cfg
            if node is not None and key in node and node.get(key) == new:
                node[key] = old
        if cell.is_base:  # the base evaluation does not depend on the training options
            for key in ("method", "train", "data", "reward"):
                cfg.pop(key, None)
            cfg.run.pop("seed", None)
        payload = json.dumps(
            {"config": OmegaConf.to_container(cfg), "evaluation": asdict(self.evaluation)}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _method_name(overrides: list[str]) -> str | None:
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "method":
            return value
    return None


def load_protocol(path: Path | str = DEFAULT_PROTOCOL) -> Protocol:
    """Parses and validates a protocol file.

    Raises:
        ProtocolError: Missing or unknown sections, malformed entries (the message names them).
    """
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(f"protocol file {path} does not exist; pass --protocol PATH (default {DEFAULT_PROTOCOL}).")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path} must be a YAML mapping with the sections {', '.join(sorted(TOP_KEYS))}.")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ProtocolError(f"{path}: unknown section(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}.")
    missing = {"base_config", "seeds", "methods"} - set(raw)
    if missing:
        raise ProtocolError(f"{path}: missing section(s) {sorted(missing)}.")
    try:
        evaluation = EvalProtocol(**(raw.get("evaluation") or {}))
    except TypeError as err:
        raise ProtocolError(
            f"{path}: evaluation: {err}; allowed keys: {list(EvalProtocol.__dataclass_fields__)}."
        ) from err
    methods: dict[str, dict[str, Any]] = {}
    for name, spec in (raw["methods"] or {}).items():
        spec = spec or {}
        extra = set(spec) - {"overrides", "inherit"}
        if extra:
            raise ProtocolError(f"{path}: methods.{name} has unknown key(s) {sorted(extra)}; use overrides/inherit.")
        methods[str(name)] = {
            "overrides": _overrides(spec.get("overrides"), f"methods.{name}.overrides"),
            "inherit": list(spec.get("inherit") or []),
        }
    ablations: dict[str, dict[str, list[str]]] = {}
    seen: set[str] = set()
    for group, variants in (raw.get("ablations") or {}).items():
        if not isinstance(variants, dict):
            raise ProtocolError(f"{path}: ablations.{group} must map variant names to overrides.")
        for name in variants:
            if name in seen or name == BASE:
                raise ProtocolError(f"{path}: ablation variant name {name!r} is reserved or used twice; rename it.")
            seen.add(name)
        ablations[str(group)] = {str(n): _overrides(o, f"ablations.{group}.{n}") for n, o in variants.items()}
    seeds = _seeds(raw["seeds"], path, "seeds")
    ablation_seeds = _seeds(raw["ablation_seeds"], path, "ablation_seeds") if "ablation_seeds" in raw else None
    return Protocol(
        path=path,
        base_config=str(raw["base_config"]),
        common=_overrides(raw.get("common"), "common"),
        evaluation=evaluation,
        seeds=seeds,
        methods=methods,
        ablations=ablations,
        ablation_seeds=ablation_seeds,
    )


def _seeds(value: Any, path: Path, key: str) -> list[int]:
    ints = isinstance(value, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    if not ints or not value:
        raise ProtocolError(f"{path}: {key} must be a non-empty list of integer seeds, e.g. [0, 1, 2]; got {value!r}.")
    if len(set(value)) != len(value):
        raise ProtocolError(f"{path}: {key} lists a seed twice ({value}); each seed is one cell per variant.")
    return [int(s) for s in value]
