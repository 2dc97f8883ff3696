"""The headers of a dataset's many files, read once and cached by path, size and modification time.

A national DEM comes as hundreds of files and a global land cover as thousands: opening each one
at every parse would cost seconds to minutes, so headers are read in parallel (GDAL opens files
without holding Python's lock) and kept in one JSON file per dataset. A file whose size or
modification time changed is read again; the others come from the cache.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

from workflow_lib.atomic import write_json_atomic
from workflow_lib.sources.header import RasterHeader, read_header
from workflow_lib.sources.paths import stamps

CATALOG_FORMAT = 2
# Header reads at once: opening a file is mostly waiting (disk, network mount), not computing.
READERS = 16


def read_headers(dataset: str, paths: list[str], band: int, cache_dir: str | None) -> list[RasterHeader]:
    """Every file's header, in the order of ``paths``. Raises InputRasterError naming the first
    file (in that order) that cannot be used."""
    cache_path = os.path.join(cache_dir, f"{dataset}.json") if cache_dir else None
    cached = _load(cache_path, band)
    found = stamps(paths)
    todo = [i for i, (p, s) in enumerate(zip(paths, found))
            if p not in cached or (cached[p].size_bytes, cached[p].mtime_ns) != s]
    if todo:
        with ThreadPoolExecutor(min(READERS, len(todo))) as pool:
            results = list(pool.map(lambda i: _read(dataset, paths[i], band), todo))
        errors = [r for r in results if isinstance(r, Exception)]
        fresh = {paths[i]: r for i, r in zip(todo, results) if not isinstance(r, Exception)}
        cached.update(fresh)
        if cache_path and fresh:
            _save(cache_path, band, {p: cached[p] for p in paths if p in cached})
        if errors:
            raise errors[0]
    return [cached[p] for p in paths]


def _read(dataset: str, path: str, band: int):
    try:
        return read_header(dataset, path, band)
    except Exception as exc:  # returned, and raised by the caller once the good headers are cached
        return exc


def _load(path: str | None, band: int) -> dict[str, RasterHeader]:
    if not path:
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        if data["format"] != CATALOG_FORMAT or data["band"] != band:
            return {}
        crs = data["crs"]
        out = {}
        for p, h in data["headers"].items():
            h = dict(h, path=p, crs_wkt=crs[h["crs_wkt"]])
            out[p] = RasterHeader.from_dict(h)
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}  # no cache yet, or an old or damaged one: read the files again


def _save(path: str, band: int, headers: dict[str, RasterHeader]) -> None:
    # Thousands of files share a handful of CRSs: each WKT is stored once.
    crs: dict[str, int] = {}
    entries = {}
    for p, h in headers.items():
        d = h.to_dict()
        del d["path"]
        d["crs_wkt"] = crs.setdefault(h.crs_wkt, len(crs))
        entries[p] = d
    write_json_atomic(path, {"format": CATALOG_FORMAT, "band": band, "crs": list(crs), "headers": entries})
