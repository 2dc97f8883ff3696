"""Files appear under their final name only when they are complete.

Everything is written under a temporary name in the destination's own folder (so the rename is
atomic: same file system) and renamed at the end; on any failure the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{stem}-", suffix=ext, dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates files readable by the owner only; results are meant to be shared.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp + ".aux.xml", tmp + ".ovr"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, data: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)  # keep insertion order: it is the config order
