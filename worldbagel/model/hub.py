"""Model folders named by a Hugging Face repo id, found in the local Hugging Face cache.

    resolve_model_folder("/models/BAGEL-7B-MoT")        # a folder that exists: returned as it is
    resolve_model_folder("ByteDance-Seed/BAGEL-7B-MoT") # the cached snapshot of the repo's main revision

Nothing is downloaded: the cache is read with `snapshot_download(..., local_files_only=True)`, so no network
request is made. A path that exists locally always wins over a repo id of the same spelling. When neither a
folder nor a cached snapshot exists, the error gives the `hf download` command that fetches the model and
says to point `model.path` at the folder it writes.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from worldbagel.errors import CheckpointError, DependencyNotInstalled

__all__ = ["download_command", "download_dir", "looks_like_repo_id", "resolve_model_folder"]

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
"""`owner/name` as the Hub spells repo ids (letters, digits, `-`, `_`, `.`; one slash)."""


def looks_like_repo_id(value: str) -> bool:
    """Whether `value` has the shape of a Hub repo id (`owner/name`, e.g. ByteDance-Seed/BAGEL-7B-MoT)."""
    return bool(_REPO_ID.fullmatch(value)) and ".." not in value and "--" not in value and value[-1] != "."


def download_dir(repo_id: str) -> str:
    """The folder the suggested download writes `repo_id` to: models/<name>."""
    return f"models/{repo_id.split('/')[-1]}"


def download_command(repo_id: str) -> str:
    """The command that downloads `repo_id` into a plain folder (the `hf` CLI of huggingface_hub)."""
    return f"hf download {repo_id} --local-dir {download_dir(repo_id)}"


def resolve_model_folder(path: str | os.PathLike, name: str = "model.path") -> Path:
    """The model folder that `path` names: an existing local path, else the cached snapshot of a repo id.

    A value that neither exists locally nor looks like a repo id is returned unchanged, so the loader's own
    "folder does not exist" error reports it. `name` is the argument shown in the error.
    """
    local = Path(path).expanduser()
    if local.exists() or not looks_like_repo_id(str(path)):
        return local
    repo_id = str(path)
    folder = _cached_snapshot(repo_id)
    if folder is None:
        raise CheckpointError(
            f"invalid {name}={repo_id!r}: no folder of that name here, and the Hugging Face cache holds no "
            f"complete snapshot of the repo {repo_id} (nothing is downloaded for you). Download it with\n"
            f"    {download_command(repo_id)}\n"
            f"and set {name}={download_dir(repo_id)} (or pass that folder to from_pretrained)."
        )
    logger.info("model %s resolved from the Hugging Face cache: %s", repo_id, folder)
    return folder


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of `repo_id` (its `main` ref), or None when it is absent or incomplete."""
    try:  # huggingface_hub comes with transformers
        # lazy: huggingface_hub takes ~1 s to import; model paths never pay for it, only repo ids
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:
        raise DependencyNotInstalled(
            f"resolving the repo id {repo_id!r} needs huggingface_hub ({exc}); pip install huggingface_hub"
        ) from exc
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError) as exc:
        # absent, known to be incomplete (a LocalEntryNotFoundError subclass in newer hubs), or an id the Hub's
        # own validation refuses (HFValidationError, a ValueError)
        logger.debug("no cached snapshot of %s: %s", repo_id, exc)
        return None
