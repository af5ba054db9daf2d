"""The one rule every tiny model follows: where it is cached, when it is rebuilt, how it is
published.

A build is a folder with a stamp file, `jobhive-tiny.json`, naming the model, its builder's
VERSION and the parameters it was built with. A folder whose stamp says anything else (an older
VERSION, other parameters, no stamp: a half-copied folder) is rebuilt whole. Bump a builder's
VERSION whenever what it builds changes. The stamp is also how a worker knows its weights are
random (`workers.runtime.model.tiny_stamp`): real weights never carry one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.runtime.model import TINY_STAMP

log = logging.getLogger("jobhive.tiny")

CACHE_DIR = Path.home() / ".cache" / "jobhive"


def default_folder(name: str) -> Path:
    """Where the tiny model `name` is cached unless told otherwise: ~/.cache/jobhive/tiny-NAME."""
    return CACHE_DIR / f"tiny-{name}"


def ensure_built(
    name: str,
    version: int,
    folder: Path | str | None,
    save: Callable[[Path], None],
    **params: Any,
) -> Path:
    """The folder of a current build of the tiny model `name`, built there first if needed.

    Args:
        name (str): the model's name (sd3, llama4, clip); also its default folder's.
        version (int): the builder's VERSION.
        folder (Path | str | None): where it lives; None for default_folder(name).
        save (Callable[[Path], None]): builds the model and writes it into the folder it is given.
        **params: what else the build depends on (seed, sizes); part of the stamp.

    Returns:
        Path: the folder, ready for from_pretrained.
    """
    target = Path(folder) if folder else default_folder(name)
    wanted = {"model": name, "version": version, **params}

    def is_built() -> bool:
        try:
            return json.loads((target / TINY_STAMP).read_text()) == wanted
        except (OSError, ValueError):
            return False

    if is_built():
        return target
    log.info("building the tiny random-weight %s in %s", name, target)
    _quiet_progress_bars()

    def save_stamped(staging: Path) -> None:
        save(staging)
        (staging / TINY_STAMP).write_text(json.dumps(wanted))  # last: a stamped folder is whole

    return _publish_folder(target, save_stamped, is_built)


def _quiet_progress_bars() -> None:
    """No per-shard progress bars on the terminal: a tiny build takes a second. (diffusers only
    where it is imported already: importing it costs seconds of CPU a Llama or CLIP build does
    not need, and saving a pipeline shows no bar.)"""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if (diffusers := sys.modules.get("diffusers")) is not None:
        diffusers.utils.logging.disable_progress_bar()


def _publish_folder(target: Path, save: Callable[[Path], None],
                    is_built: Callable[[], bool]) -> Path:
    """Has `save(folder)` fill a new folder beside `target`, then renames it to `target`: two
    processes building at once never see half a model, and the slower one keeps the other's."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save(staging)
        if target.exists() and not is_built():  # an older or broken build: replaced whole
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:  # another process got there first
            if not is_built():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
