"""Weights directories of the small ShapesWorld networks: ``model.safetensors`` plus ``config.json`` (the
architecture dataclass and a model card)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from safetensors.torch import load_file, save_file


class WeightsDirectory:
    """Mixin for an ``nn.Module`` built from one architecture dataclass ``self.arch`` (of type ``arch_cls``).

    Subclasses set ``arch_cls``, ``what`` (named in errors) and optionally ``how`` (how to make the weights), and
    may override :meth:`arch_from` to read older configs.
    """

    arch_cls: ClassVar[type]
    what: ClassVar[str]
    how: ClassVar[str] = ""

    def save(self, directory: Path, card: dict | None = None) -> None:
        """Writes ``model.safetensors`` and ``config.json`` (architecture plus optional card metadata)."""
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        save_file(state, str(directory / "model.safetensors"))
        config = {"arch": asdict(self.arch), **(card or {})}  # type: ignore[attr-defined]
        (directory / "config.json").write_text(json.dumps(config, indent=1))

    @classmethod
    def load(cls, directory: Path) -> Any:
        """The model saved in ``directory``, in eval mode."""
        cfg_path = Path(directory) / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{directory} holds no {cls.what} (config.json missing){cls.how}.")
        arch = cls.arch_from(json.loads(cfg_path.read_text())["arch"], Path(directory))
        model = cls(arch)  # type: ignore[call-arg]
        model.load_state_dict(load_file(str(Path(directory) / "model.safetensors")))
        return model.eval()

    @classmethod
    def arch_from(cls, arch: dict[str, Any], directory: Path) -> Any:
        """The architecture dataclass from the ``arch`` entry of ``directory``'s ``config.json``."""
        return cls.arch_cls(**arch)
