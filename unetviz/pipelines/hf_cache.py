"""Hugging Face repo ids found offline in the local cache."""

from __future__ import annotations

from pathlib import Path


def from_hf_cache(repo_id: str) -> Path | None:
    """The local snapshot folder of a Hugging Face repo id (``org/name``) already in the cache,
    found offline; None if it is not a repo id or not cached."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not available offline"
        return None
    return Path(folder)
