"""Finding reward-model weights: a local file or folder (offline), a hub id (online or the hub cache), or the
reward folder ``$LEAPALIGN_REWARD_DIR``.

Every error names what to download, from where, and where to put it, with the override that ``leapalign train``
accepts (``"reward.terms=[{name: hpsv2, args: {checkpoint: /path/HPS_v2.1_compressed.pt}}]"``).

:class:`WeightFile` and :func:`find_weights` check, without loading anything or using the network, that the weights
a reward declares are there (``leapalign.preflight``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REWARD_DIR_ENV = "LEAPALIGN_REWARD_DIR"


def reward_dir() -> Path | None:
    """The folder named by ``$LEAPALIGN_REWARD_DIR``, or ``None`` when the variable is unset."""
    value = os.environ.get(REWARD_DIR_ENV)
    return Path(value).expanduser() if value else None


def _looks_local(spec: str) -> bool:
    """A path rather than a hub id (``owner/name``)."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec


def override_hint(arg: str, value: str) -> str:
    """The ``leapalign train`` override that sets reward argument ``arg`` (``hpsv2.checkpoint``: reward ``hpsv2``,
    argument ``checkpoint``) to ``value``, e.g. ``"reward.terms=[{name: hpsv2, args: {checkpoint: /w.pt}}]"``."""
    reward, sep, key = arg.partition(".")
    if not sep:
        return f"{arg}={value}"
    return f'"reward.terms=[{{name: {reward}, args: {{{key}: {value}}}}}]" (evaluation.rewards takes the same list)'


def check_local(spec: str | None, *, what: str, arg: str) -> None:
    """Fails at construction (before any model is built) when ``spec`` is a local path that does not exist.

    Hub ids and ``None`` pass; they are resolved when the weights load.
    """
    if spec is not None and _looks_local(spec) and not Path(spec).expanduser().exists():
        raise FileNotFoundError(
            f"{what}: {spec} does not exist; fix the reward argument, e.g. {override_hint(arg, '/path')} "
            f"(see docs/rewards.md)."
        )


def _hub_source(spec: str | None, repo_id: str | None) -> str | None:
    """The hub repository a single file is fetched from: ``repo_id`` by default, ``spec`` when it is a hub id."""
    if spec is None:
        return repo_id
    if _looks_local(spec) or spec.endswith((".pt", ".pth", ".bin", ".safetensors")):
        return None
    return spec


def resolve_file(
    spec: str | None,
    *,
    filename: str,
    repo_id: str | None,
    what: str,
    arg: str,
    url: str | None = None,
) -> Path:
    """Finds one weights file.

    Order: ``spec`` as a file; ``spec`` as a folder holding ``filename``; ``$LEAPALIGN_REWARD_DIR/filename``;
    ``filename`` from the hub repository ``spec`` (or ``repo_id`` when ``spec`` is ``None``), which works offline
    when the file is in the hub cache.

    Args:
        spec: What the user gave (reward argument ``arg``), or ``None`` for the default.
        filename: The official file name, e.g. ``HPS_v2.1_compressed.pt``.
        repo_id: Hub repository holding ``filename`` (``None``: not on the hub).
        what: Human-readable model name for messages.
        arg: The reward argument that takes the path, for messages.
        url: Where to download the file by hand, for messages.

    Raises:
        FileNotFoundError: Nothing found; the message says what to download and where to put it.
    """
    if spec is not None:
        path = Path(spec).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            if (path / filename).is_file():
                return path / filename
            raise FileNotFoundError(
                f"{what}: folder {path} has no {filename}; put the file there or pass it: "
                f"{override_hint(arg, '/path/to/' + filename)}."
            )
    folder = reward_dir()
    if spec is None and folder is not None and (folder / filename).is_file():
        return folder / filename
    hub = _hub_source(spec, repo_id)
    if hub is not None:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(hub, filename))
        except Exception as err:  # offline, missing repo or file: explained below
            logger.debug("hub download of %s/%s failed: %s", hub, filename, err)
    source = url or (f"https://huggingface.co/{repo_id}/blob/main/{filename}" if repo_id else "its official release")
    where = f"${REWARD_DIR_ENV}/{filename}" if folder is None else str(folder / filename)
    raise FileNotFoundError(
        f"{what}: weights file {filename} not found (looked for {spec or 'the default'}). Download it from {source} "
        f"and either pass it as {override_hint(arg, '/path/to/' + filename)} or put it at {where}."
    )


def load_pretrained(
    loader: Callable[[str], Any], spec: str, *, what: str, arg: str, repo_default: str | None = None
) -> Any:
    """Calls a Hugging Face ``from_pretrained``-style ``loader`` on a folder or hub id, explaining failures.

    A bare hub id also matches a folder of the same last name inside ``$LEAPALIGN_REWARD_DIR``
    (``yuvalkirstain/PickScore_v1`` -> ``$LEAPALIGN_REWARD_DIR/PickScore_v1``).

    Raises:
        FileNotFoundError: The folder is missing, or the hub id cannot be loaded (offline and not cached).
    """
    path = Path(spec).expanduser()
    folder = reward_dir()
    if not path.exists() and folder is not None and (folder / spec.rstrip("/").split("/")[-1]).is_dir():
        path = folder / spec.rstrip("/").split("/")[-1]
    if path.exists():
        return loader(str(path))
    if _looks_local(spec):
        raise FileNotFoundError(
            f"{what}: folder {spec} does not exist; pass the folder with the model files: "
            f"{override_hint(arg, 'FOLDER')}."
        )
    try:
        return loader(spec)
    except OSError as err:
        name = spec.rstrip("/").split("/")[-1]
        raise FileNotFoundError(
            f"{what}: cannot load {spec!r} ({str(err).splitlines()[0]}). Without network, download it once "
            f"elsewhere with `hf download {spec} --local-dir {name}`, then pass it as "
            f"{override_hint(arg, '/path/to/' + name)} or put the folder at ${REWARD_DIR_ENV}/{name}."
        ) from err


@dataclass(frozen=True)
class WeightFile:
    """Weights a reward loads, as it declares them for the checks before training (:func:`find_weights`).

    Attributes:
        arg: The reward argument that names them, e.g. ``checkpoint``.
        spec: Its value (``None``: the default place).
        what: What they are, for messages.
        filename: The official name of a single file (found as :func:`resolve_file` does); ``None`` for a
            ``from_pretrained`` folder or hub id (found as :func:`load_pretrained` does).
        repo_id: The hub repository holding ``filename`` when ``spec`` is ``None``.
        url: Where to download ``filename`` by hand, for messages.
    """

    arg: str
    spec: str | None
    what: str
    filename: str | None = None
    repo_id: str | None = None
    url: str | None = None


def _in_hub_cache(repo_id: str, filename: str | None) -> bool:
    """Whether the hub cache holds ``filename`` of ``repo_id`` (any file of it when ``filename`` is ``None``)."""
    try:
        import huggingface_hub as hub

        if filename is not None:
            return isinstance(hub.try_to_load_from_cache(repo_id, filename), str)
        return Path(hub.snapshot_download(repo_id, local_files_only=True)).is_dir()
    except Exception as err:  # not cached, or an invalid id: either way not usable offline
        logger.debug("%s is not in the hub cache: %s", repo_id, err)
        return False


def find_weights(need: WeightFile, offline: bool) -> str | None:
    """Where the loader would find ``need``, without loading it or using the network.

    Returns:
        ``"local:PATH"``, ``"cache:REPO"`` (the hub cache), ``"hub:REPO"`` (not cached: downloaded at the first
        load, only when ``offline`` is false), or ``None`` when the loader would fail.
    """
    folder = reward_dir()
    if need.filename is not None:
        if need.spec is not None:
            path = Path(need.spec).expanduser()
            if path.is_file():
                return f"local:{path}"
            if path.is_dir():
                return f"local:{path / need.filename}" if (path / need.filename).is_file() else None
        if need.spec is None and folder is not None and (folder / need.filename).is_file():
            return f"local:{folder / need.filename}"
        repo = _hub_source(need.spec, need.repo_id)
    else:
        if need.spec is None:
            return None
        path = Path(need.spec).expanduser()
        named = folder / need.spec.rstrip("/").split("/")[-1] if folder is not None else None
        if path.exists() or (named is not None and named.is_dir()):
            return f"local:{path if path.exists() else named}"
        repo = None if _looks_local(need.spec) else need.spec
    if repo is None:
        return None
    if _in_hub_cache(repo, need.filename):
        return f"cache:{repo}"
    return None if offline else f"hub:{repo}"


def missing_weights_message(need: WeightFile, reward: str, key: str, offline: bool) -> str:
    """One line saying that ``need`` of reward ``reward`` (config entry ``key``, e.g. ``reward.terms.0``) is missing:
    what to download, from where, and the override or folder that points at it."""
    note = "offline (HF_HUB_OFFLINE), so nothing is downloaded"
    env = f"${REWARD_DIR_ENV}" if reward_dir() is None else str(reward_dir())
    if need.filename is not None:
        source = need.url or (
            f"https://huggingface.co/{need.repo_id}/blob/main/{need.filename}" if need.repo_id else "its release"
        )
        return (
            f"reward {reward!r} ({key}): {need.what} weights file {need.filename} not found (looked for "
            f"{need.spec or 'the default'}{'; ' + note if offline else ''}). Download it from {source}, then set "
            f"{key}.args.{need.arg}=/path/to/{need.filename} or put it at {env}/{need.filename}."
        )
    spec = need.spec or ""
    name = spec.rstrip("/").split("/")[-1] or need.arg
    if _looks_local(spec):
        return (
            f"reward {reward!r} ({key}): {need.what} folder {spec} does not exist; set {key}.args.{need.arg}=FOLDER "
            f"to a folder with the model files."
        )
    return (
        f"reward {reward!r} ({key}): {need.what} {spec!r} is neither a local folder nor in the hub cache"
        f"{' (' + note + ')' if offline else ''}. "
        f"Download it with `hf download {spec} --local-dir {name}` where there is network, then set "
        f"{key}.args.{need.arg}=/path/to/{name} or put the folder at {env}/{name}."
    )
