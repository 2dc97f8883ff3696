"""Files appear under their final name only when they are complete.

Everything is written under a temporary name in the destination's own folder (so the rename is
atomic: same file system) and renamed at the end; on any failure the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import tempfile
from collections.abc import Iterator

TMP_PREFIX = ".tmp-"


def temporary_prefix(path: str) -> str:
    """Every temporary file made for ``path`` starts with this (in the same folder).

    Names of outputs never contain a dot before their extension (dataset names are
    [A-Za-z0-9_-], tile ids r<row>_c<col>), so the dot after the stem keeps "dem" from matching
    the temporary files of "dem-2".
    """
    folder = os.path.dirname(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(folder, f"{TMP_PREFIX}{stem}.")


def remove_stale_temporaries(path: str) -> list[str]:
    """Remove what a killed writer of ``path`` left behind (SIGKILL gives it no chance to)."""
    removed = []
    for stale in glob.glob(glob.escape(temporary_prefix(path)) + "*"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    Only one job writes a given output at a time (Snakemake sees to it), so temporaries of the
    same output found on entry are a killed job's leftovers and are removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    ext = os.path.splitext(path)[1]
    prefix = temporary_prefix(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(prefix), suffix=ext, dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates files readable by the owner only; results are meant to be shared.
        os.chmod(tmp, shared_mode())
        os.replace(tmp, path)
    except BaseException:
        # The temporary file and whatever GDAL made beside it (.aux.xml, COG overview scratch).
        for leftover in glob.glob(glob.escape(tmp) + "*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise


def shared_mode() -> int:
    """Mode of a finished output: what the user's umask gives a new file (mkstemp's are private)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, data: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)  # keep insertion order: it is the config order


def check_writable(folder: str) -> None:
    """Raise OSError (with its cause) if files cannot be made in ``folder``, or in the folder it
    would be made in when it does not exist yet (nothing is created): a temporary file is written
    and removed. A run checks its output folder before any job."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder, has its name", folder)
    existing = os.path.abspath(folder)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    with tempfile.NamedTemporaryFile(dir=existing, prefix=TMP_PREFIX + "writable."):
        pass
