"""Publishing a built model folder whole: the tiny models' builds share this."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def publish_folder(target: Path, save: Callable[[Path], None],
                   is_built: Callable[[], bool]) -> Path:
    """Has `save(folder)` fill a new folder beside `target`, then renames it to `target`: two
    processes building at once never see half a model, and the slower one keeps the other's.

    Args:
        target (Path): the finished folder's path; an older folder there is replaced.
        save (Callable[[Path], None]): writes everything into the folder it is given.
        is_built (Callable[[], bool]): whether `target` holds a finished build (checked when
            the rename loses a race).
    """
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
