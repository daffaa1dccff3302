"""Finding reward-model weights: a local file or folder (offline), a hub id (online or the hub cache), or the
reward folder ``$LEAPALIGN_REWARD_DIR``.

Every error names what to download, from where, and where to put it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
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


def check_local(spec: str | None, *, what: str, arg: str) -> None:
    """Fails at construction (before any model is built) when ``spec`` is a local path that does not exist.

    Hub ids and ``None`` pass; they are resolved when the weights load.
    """
    if spec is not None and _looks_local(spec) and not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"{what}: {spec} does not exist; fix the reward argument {arg} (see docs/rewards.md).")


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
            raise FileNotFoundError(f"{what}: folder {path} has no {filename}; put the file there or pass {arg}=FILE.")
    folder = reward_dir()
    if spec is None and folder is not None and (folder / filename).is_file():
        return folder / filename
    if spec is None:
        hub = repo_id
    elif _looks_local(spec) or spec.endswith((".pt", ".pth", ".bin", ".safetensors")):
        hub = None
    else:
        hub = spec
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
        f"and either pass the reward argument {arg}=/path/to/{filename} or put it at {where}."
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
        raise FileNotFoundError(f"{what}: folder {spec} does not exist; pass {arg}=FOLDER with the model files.")
    try:
        return loader(spec)
    except OSError as err:
        name = spec.rstrip("/").split("/")[-1]
        raise FileNotFoundError(
            f"{what}: cannot load {spec!r} ({str(err).splitlines()[0]}). Without network, download it once "
            f"elsewhere with `hf download {spec} --local-dir {name}`, then pass {arg}=/path/to/{name} or put the "
            f"folder at ${REWARD_DIR_ENV}/{name}."
        ) from err
