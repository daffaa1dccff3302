"""Checks before training: everything a run reads or writes is there and usable, before the model is built.

:func:`check_inputs` takes a validated :class:`~leapalign.config.ExperimentConfig` and raises at the first problem,
with one line naming the problem and the fix (with the override that ``leapalign train`` accepts). It builds no
model, loads no weights and uses no network, so it takes well under a second. In order:

1. **prompts**: ``data.prompts`` (balanced by ``data.balance_by``) and, when ``evaluation.enabled``,
   ``evaluation.prompts`` parse and hold at least one prompt (:func:`leapalign.data.load_prompt_set`);
2. **rewards**: every ``reward.terms`` entry (and ``evaluation.rewards`` entry when evaluating) takes the
   arguments it is given, and the weight files and folders it declares (its ``required_weights`` hook, see
   :mod:`leapalign.rewards`) are found where its loader will look: the argument's path, ``$LEAPALIGN_REWARD_DIR``
   or the hub cache;
3. **model**: for the ``flux`` and ``sd3`` models, ``model.path`` is a complete diffusers pipeline folder or a
   well-formed hub id;
4. **output**: ``run.output_dir`` is a folder (created if missing) in which a file can be written.

Hub ids: when the hub client is offline (``HF_HUB_OFFLINE=1``, as ``docs/rewards.md`` advises on machines without
network) a hub id that is not in the local hub cache is an error. Online, it is downloaded when first loaded, and
this module only logs a warning (a gated repository such as FLUX.1-dev then needs a login, which cannot be checked
without the network; the loader's error says so in one line).

Example:
    >>> from leapalign.config import load_config
    >>> from leapalign.preflight import check_inputs
    >>> check_inputs(load_config("flux/leapalign", ["model.path=/models/FLUX.1-dev"]), offline=True)
    FileNotFoundError: reward 'hpsv2' (reward.terms.0): HPSv2.1 weights file HPS_v2.1_compressed.pt not found (...).
    Download it from https://huggingface.co/xswu/HPSv2/blob/main/HPS_v2.1_compressed.pt, then set
    reward.terms.0.args.checkpoint=/path/to/HPS_v2.1_compressed.pt or put it at $LEAPALIGN_REWARD_DIR/...
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from leapalign.config import ExperimentConfig
from leapalign.data.prompts import load_prompt_set
from leapalign.families import FAMILIES, check_pretrained_path
from leapalign.models.hub import gated_hint, hub_offline, in_hub_cache
from leapalign.rewards import check_reward_args, required_weights
from leapalign.rewards.base import RewardTermConfig
from leapalign.rewards.weights import find_weights, missing_weights_message

logger = logging.getLogger(__name__)

PIPELINE_FOLDERS = {name: family.folders for name, family in FAMILIES.items()}
"""The subfolders each family's adapter reads from a pipeline folder (SD3's T5 is optional)."""


def check_inputs(cfg: ExperimentConfig, *, offline: bool | None = None) -> None:
    """Checks the prompts, rewards, model path and output folder of ``cfg`` without building the model.

    Args:
        cfg: A validated experiment config (:func:`leapalign.config.load_config`).
        offline: Whether hub ids must already be in the local hub cache; ``None``: as the hub client is
            (``HF_HUB_OFFLINE``).

    Raises:
        ValueError: A prompt file that does not parse or is empty, reward arguments its constructor does not take,
            a malformed ``model.path`` or an incomplete pipeline folder, or an output folder that is a file or
            not writable.
        FileNotFoundError: A reward's weight file or folder (or, offline, a hub id) that is not there.
    """
    offline = hub_offline() if offline is None else offline
    check_prompts(cfg)
    check_rewards(cfg, offline=offline)
    check_model(cfg, offline=offline)
    check_output_dir(cfg.run.output_dir)


def check_prompts(cfg: ExperimentConfig) -> None:
    """``data.prompts`` and, when evaluating during training, ``evaluation.prompts`` parse and are not empty."""
    load_prompt_set(cfg.data.prompts, balance_by=cfg.data.balance_by, key="data.prompts")
    if cfg.evaluation.enabled:
        load_prompt_set(cfg.evaluation.prompts, limit=cfg.evaluation.limit, key="evaluation.prompts")


def _reward_terms(cfg: ExperimentConfig) -> list[tuple[str, RewardTermConfig]]:
    terms = [(f"reward.terms.{i}", t) for i, t in enumerate(cfg.reward.terms)]
    if cfg.evaluation.enabled:
        terms += [(f"evaluation.rewards.{i}", t) for i, t in enumerate(cfg.evaluation.rewards)]
    return terms


def check_rewards(cfg: ExperimentConfig, *, offline: bool) -> None:
    """Every reward's arguments fit its constructor and the weights it declares are where its loader looks."""
    warned: set[str] = set()
    for key, term in _reward_terms(cfg):
        check_reward_args(term, key)
        for need in required_weights(term):
            found = find_weights(need, offline)
            if found is None:
                raise FileNotFoundError(missing_weights_message(need, term.name, key, offline))
            if found.startswith("hub:") and found not in warned:
                warned.add(found)
                logger.warning(
                    "reward %s (%s): %s %s is not in the hub cache; it is downloaded at its first use (set "
                    "HF_HUB_OFFLINE=1 on machines without network to have this checked now)",
                    term.name,
                    key,
                    need.what,
                    found.removeprefix("hub:"),
                )


def check_model(cfg: ExperimentConfig, *, offline: bool) -> None:
    """``model.path`` of a family's real model (``leapalign models``): a complete pipeline folder of that family or
    a hub id (cached, offline).

    Other models (the tiny ones, built in-process, and those of plugins, which define their own use of
    ``model.path``) are not checked.
    """
    kind = cfg.model.name
    if kind not in PIPELINE_FOLDERS:
        return
    source = check_pretrained_path(cfg.model.path, kind)  # ValueError: unset, or neither a folder nor a hub id
    folder = Path(source)
    if folder.is_dir():
        missing = [f"{name}/" for name in PIPELINE_FOLDERS[kind] if not (folder / name).is_dir()]
        if missing:
            raise ValueError(
                f"model.path={source!r} lacks {', '.join(missing)}: it must be a complete diffusers pipeline "
                f"folder; download one with `hf download REPO_ID --local-dir DIR` and set model.path=DIR."
            )
        return
    if in_hub_cache(source):
        return
    if offline:
        raise FileNotFoundError(
            f"model.path={source!r} is not in the local hub cache and HF_HUB_OFFLINE is set, so it cannot be "
            f"downloaded: on a machine with network run `hf download {source} --local-dir DIR` "
            f"({gated_hint(source)}) and set model.path=DIR, or unset HF_HUB_OFFLINE."
        )
    logger.warning(
        "model.path=%s is not in the local hub cache; it is downloaded when the model is built (%s)",
        source,
        gated_hint(source),
    )


def check_output_dir(output_dir: str | Path, key: str = "run.output_dir") -> None:
    """``output_dir`` is a folder, created if missing, in which a file can be created and removed.

    The folder (and missing parents) are left in place: the trainer writes there next. The probe file is named
    after the host and process, so several ranks may check the same folder at once.
    """
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{key}={str(output_dir)!r} is a file, not a folder; set {key}=DIR to a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".leapalign-probe-{socket.gethostname()}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"{key}={str(output_dir)!r} is not a writable folder ({err.strerror or err}); set {key}=DIR to a "
            f"folder you can write to."
        ) from err
