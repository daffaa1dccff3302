"""Diffusers pipelines from the Hugging Face hub: one-line errors for gated, missing or unreachable repositories
and for broken local folders (:func:`explain_load_errors`), and network-free checks of the hub cache and of offline
mode for the checks before training (:mod:`leapalign.preflight`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
LOGIN = "`hf auth login` (older clients: `huggingface-cli login`) or HF_TOKEN"


def hub_offline() -> bool:
    """Whether the hub client is in offline mode (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set true)."""
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE") for k in OFFLINE_ENV)


def gated_hint(repo_id: str) -> str:
    """How to get access to a gated repository such as FLUX.1-dev."""
    return (
        f"for a gated model such as FLUX.1-dev, log in with {LOGIN} and accept the licence on "
        f"https://huggingface.co/{repo_id}"
    )


def in_hub_cache(repo_id: str, filename: str = "model_index.json") -> bool:
    """Whether the local hub cache holds ``filename`` of ``repo_id`` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception as err:  # an invalid id or an unreadable cache: not usable
        logger.debug("hub cache lookup of %s failed: %s", repo_id, err)
        return False


def _chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def describe_load_error(source: str, err: BaseException, key: str = "model.path") -> str:
    """One line saying why ``source`` (a pipeline folder or hub id) did not load, and the fix."""
    from huggingface_hub import errors as hub_errors

    chain = _chain(err)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    first = _first_line(err)
    if Path(source).expanduser().is_dir():
        return (
            f"{key}={source!r}: cannot load this pipeline folder ({first}); it must be a complete diffusers pipeline "
            f"(model_index.json, scheduler/, transformer/, vae/, text_encoder*/, tokenizer*/): download it again "
            f"with `hf download REPO_ID --local-dir {source}`."
        )
    if any(isinstance(e, hub_errors.GatedRepoError) for e in chain) or "gated" in text:
        return (
            f"{key}={source!r} is a gated hub repository and this machine has no access ({first}): log in with "
            f"{LOGIN}, with an account that accepted the licence on https://huggingface.co/{source}, or set {key} "
            f"to a local copy of the pipeline."
        )
    offline = hub_offline()
    if (
        offline
        or names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout"}
        or "offline" in text
        or "connect" in text
    ):
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub is unreachable: {first}"
        return (
            f"{key}={source!r} is not in the local hub cache and cannot be downloaded ({why}): on a machine with "
            f"network run `hf download {source} --local-dir DIR` ({gated_hint(source)}) and set {key}=DIR, or unset "
            f"HF_HUB_OFFLINE where the hub is reachable."
        )
    if any(isinstance(e, hub_errors.RepositoryNotFoundError) for e in chain) or "not a valid model identifier" in text:
        return (
            f"{key}={source!r}: no such hub repository, or a private one ({first}): check the id, log in with "
            f"{LOGIN} for a private or gated one, or set {key} to a local pipeline folder."
        )
    return (
        f"{key}={source!r}: cannot load it ({type(err).__name__}: {first}); set {key} to a local pipeline folder, "
        f"or, for a hub id, {gated_hint(source)}; HF_HUB_OFFLINE=1 uses the hub cache only."
    )


@contextmanager
def explain_load_errors(source: str, key: str = "model.path") -> Iterator[None]:
    """Turns the ``OSError`` and hub errors of ``from_pretrained`` calls inside the block into one-line
    ``ValueError``\\ s naming the fix (:func:`describe_load_error`); the original stays as ``__cause__``."""
    from huggingface_hub import errors as hub_errors

    try:
        yield
    except (OSError, hub_errors.EntryNotFoundError, hub_errors.HfHubHTTPError) as err:
        raise ValueError(describe_load_error(source, err, key)) from err
