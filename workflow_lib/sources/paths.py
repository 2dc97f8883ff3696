"""What a dataset's ``path`` names: one file, a glob, a list, or a GDAL connection string.

A connection string names a file inside a driver's syntax: a subdataset of a NetCDF or HDF5 file
(``NETCDF:"climate.nc":tas``), an array of a Zarr store (``ZARR:"store.zarr":/tas``), a GDAL tile
index (``GTI:index.gpkg``). The workflow tracks the *local file* behind it (its size and
modification time say when to plan again) and hands the whole string to GDAL.
"""

from __future__ import annotations

import glob
import os
import re

from workflow_lib.errors import ConfigError
from workflow_lib.sources.remote import is_remote, remote_stamp, split_archive, to_gdal

_GLOB_CHARS = re.compile(r"[*?[]")
# DRIVER:"file":rest, DRIVER:file:rest or DRIVER:file (GDAL's subdataset and prefix syntaxes).
_CONNECTION = re.compile(r'^(?P<driver>[A-Za-z][A-Za-z0-9_]+):(?:"(?P<quoted>[^"]+)"|(?P<plain>[^:]+))(?P<rest>:.*)?$')
# Drivers whose connection strings name a local file first.
_FILE_DRIVERS = {"NETCDF", "HDF5", "HDF4_SDS", "HDF4_EOS", "ZARR", "GTI", "GPKG"}
# What makes a folder a Zarr store (version 2, consolidated or not, and version 3).
_ZARR_MARKERS = (".zgroup", ".zarray", ".zmetadata", "zarr.json")


def is_glob(path: str) -> bool:
    # A URL's "?" starts its query: globs are for local files only.
    return bool(_GLOB_CHARS.search(path)) and not _CONNECTION.match(path) and not is_remote(path)


def is_zarr_store(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in _ZARR_MARKERS)


def local_file(path: str) -> str | None:
    """The file or folder on disk that ``path`` reads: itself, or the file inside a connection
    string; None for a remote input."""
    if is_remote(path):
        return None
    archive = split_archive(path)
    if archive:
        return archive[1]
    m = _CONNECTION.match(path)
    if m and m.group("driver").upper() in _FILE_DRIVERS:
        return m.group("quoted") or m.group("plain")
    return path


def absolute(path: str) -> str:
    """``path`` with its local file made absolute (jobs may run in another folder), or a URL as
    GDAL names it (/vsicurl/, /vsis3/)."""
    if is_remote(path):
        return to_gdal(path)
    archive = split_archive(path)
    if archive:  # /vsizip//abs/a.zip/x.tif: GDAL reads /vsizip/rel/a.zip as relative
        handler, inside, member = archive
        return f"{handler}{os.path.abspath(inside)}{member}"
    m = _CONNECTION.match(path)
    if m and m.group("driver").upper() in _FILE_DRIVERS:
        inner = os.path.abspath(m.group("quoted") or m.group("plain"))
        return f'{m.group("driver")}:"{inner}"{m.group("rest") or ""}'
    return os.path.abspath(path)


def stamp(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of what ``path`` reads: a change to either means the input
    changed. A Zarr store is a folder: its metadata files and top-level entries count. A remote
    object: its size and a number made from its ETag and Last-Modified (sources.remote)."""
    if is_remote(path):
        found = remote_stamp(path)
        if found is None:
            return -1, -1  # gone or refused: the header read that follows says which
        return found
    target = local_file(path)
    st = os.stat(target)
    if not os.path.isdir(target):
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, st.st_mtime_ns
    with os.scandir(target) as entries:
        for entry in entries:
            s = entry.stat()
            size += s.st_size
            mtime = max(mtime, s.st_mtime_ns)
    return size, mtime


def stamps(paths: list[str]) -> list[tuple[int, int]]:
    """stamp() of every path, in order; remote ones asked 16 at a time (one HEAD request each)."""
    if not any(is_remote(p) for p in paths):
        return [stamp(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(stamp, paths))


def check_path(dataset: str, path: str) -> None:
    """A clear error for a path that names nothing usable; globs are checked when expanded."""
    if is_remote(path) or is_glob(path):
        return  # a URL is checked when its header is read; a glob when it is expanded
    target = local_file(path)
    if not os.path.exists(target):
        raise ConfigError(f"datasets.{dataset}.path: file not found: {target} (dataset '{dataset}')")
    if os.path.isdir(target) and not is_zarr_store(target):
        raise ConfigError(f"datasets.{dataset}.path: is a directory, not a raster: {target} (dataset '{dataset}')")


def member_paths(dataset: str, spec: str | list[str]) -> list[str]:
    """The files a dataset's ``path`` names, in the order that decides overlaps: a list in its
    order, each glob's matches sorted by name. Absolute, so that jobs may run elsewhere."""
    out = []
    for path in spec if isinstance(spec, list) else [spec]:
        check_path(dataset, path)
        if not is_glob(path):
            out.append(absolute(path))
            continue
        found = sorted(p for p in glob.glob(os.path.expanduser(path), recursive=True)
                       if os.path.isfile(p) or is_zarr_store(p))
        if not found:
            raise ConfigError(f"datasets.{dataset}.path: no file matches {path!r} (dataset '{dataset}')")
        out.extend(os.path.abspath(p) for p in found)
    if not out:
        raise ConfigError(f"datasets.{dataset}.path: the list of files is empty (dataset '{dataset}')")
    return out
