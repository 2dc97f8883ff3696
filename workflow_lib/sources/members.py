"""A dataset made of many files: the mosaic of its members, as VRTs.

Members must share their bands, data type and nodata. Consecutive members on one pixel grid (one
CRS, one pixel size, offsets a whole number of pixels apart), as the tiles of a national DEM or of
a global land cover are, make one *run* and one VRT: it holds every member at its own pixels,
unresampled, so every target pixel sees the valid pixels of all members under it (an average
across the seam between two files is the average of both), and GDAL opens only the members that
a read touches, through its pool of at most GDAL_MAX_DATASET_POOL_SIZE open files. Where members
overlap, the later one in order wins (GDAL's VRT paints its sources in order, as ``gdalbuildvrt``
does; ``overlap: first`` reverses the order). A member's nodata pixels are not painted, so the
earlier member shows through them.

Members on other grids (another UTM zone, another pixel size) start a new run. Each run is then
resampled onto the tile on its own and the runs are combined in the same order, the later run's
valid pixels over the earlier's (engines.compose).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from workflow_lib.atomic import atomic_path
from workflow_lib.errors import ConfigError, GDAL_ERRORS
from workflow_lib.vrt import Band, Source, vrt_xml
from workflow_lib.sources.header import RasterHeader
from workflow_lib.sources.paths import is_remote, stamps

# Offsets between members may be this far (in pixels) from whole numbers: the rounding of their
# geotransforms' decimal text, not a different grid.
GRID_TOLERANCE_PX = 1e-3
# Pixel sizes may differ by this much (relative) for the same reason.
SIZE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Member:
    path: str
    col_off: int  # where the member lies on the dataset's grid
    row_off: int
    width: int
    height: int


@dataclass(frozen=True)
class MemberMosaic:
    transform: Affine
    width: int
    height: int
    members: tuple[Member, ...]  # in painting order: the last one wins where they overlap


def check_members(dataset: str, headers: list[RasterHeader]) -> None:
    """What every member must share with the first (bands, data type, nodata): else a
    ConfigError naming the member and what differs."""
    first = headers[0]
    for h in headers:
        why = _mismatch(h, first)
        if why is not None:
            raise ConfigError(f"datasets.{dataset}.path: {h.path} cannot join the other files of dataset "
                              f"'{dataset}': {why}")


def split_runs(headers: list[RasterHeader]) -> list[list[RasterHeader]]:
    """The members cut into runs, in order, of files on one pixel grid (one CRS, one pixel size,
    offsets whole pixels apart, north-up): each run becomes one VRT, whose seams are invisible;
    the runs are resampled one by one and combined in order (files in several UTM zones)."""
    runs: list[list[RasterHeader]] = []
    for h in headers:
        if runs and _same_grid(h, runs[-1][0]):
            runs[-1].append(h)
        else:
            runs.append([h])
    return runs


def _same_grid(h: RasterHeader, first: RasterHeader) -> bool:
    t, ht = first.transform, h.transform
    if t.b or t.d or ht.b or ht.d or t.a <= 0 or t.e >= 0:
        return False
    if abs(ht.a - t.a) > SIZE_TOLERANCE * t.a or abs(ht.e - t.e) > SIZE_TOLERANCE * -t.e:
        return False
    col, row = (ht.c - t.c) / t.a, (ht.f - t.f) / t.e
    if abs(col - round(col)) > GRID_TOLERANCE_PX or abs(row - round(row)) > GRID_TOLERANCE_PX:
        return False
    return h.crs_wkt == first.crs_wkt or h.crs == first.crs


def arrange(headers: list[RasterHeader]) -> MemberMosaic:
    """Place the members of one run (split_runs) on its pixel grid, in painting order."""
    first = headers[0]
    t = first.transform
    a, c0, e, f0 = t.a, t.c, t.e, t.f
    cols = np.array([round((h.transform.c - c0) / a) for h in headers])
    rows = np.array([round((h.transform.f - f0) / e) for h in headers])
    widths = np.array([h.width for h in headers])
    heights = np.array([h.height for h in headers])
    col0, row0 = int(cols.min()), int(rows.min())
    width, height = int((cols + widths).max()) - col0, int((rows + heights).max()) - row0
    members = [Member(h.path, int(c) - col0, int(r) - row0, h.width, h.height)
               for h, c, r in zip(headers, cols, rows)]
    return MemberMosaic(Affine(a, 0.0, c0 + col0 * a, 0.0, e, f0 + row0 * e), width, height, tuple(members))


def _mismatch(h: RasterHeader, first: RasterHeader) -> str | None:
    if h.count != first.count:
        return f"it has {h.count} band(s) and {first.path} has {first.count}"
    if h.dtype != first.dtype:
        return f"its data type is {h.dtype} and that of {first.path} is {first.dtype}"
    same = h.nodata == first.nodata or (h.nodata is not None and first.nodata is not None and
                                        math.isnan(h.nodata) and math.isnan(first.nodata))
    if not same:
        return (f"its nodata is {h.nodata} and that of {first.path} is {first.nodata} (set datasets.<name>.nodata "
                "to treat one value as nodata in every file)")
    return None


def vrt_nodata(first: RasterHeader, override: float | None) -> float | None:
    """The VRT's nodata, which also fills the gaps between members: the one given in the config,
    else the members' own, else NaN for real numbers (a gap is no data, never zero). Integer
    members without nodata leave gaps as 0, as gdalbuildvrt does (docs/configuration.md: set ``nodata``)."""
    if override is not None:
        return override
    if first.nodata is not None:
        return first.nodata
    return math.nan if np.dtype(first.dtype).kind == "f" else None


def write_members_vrt(dataset: str, headers: list[RasterHeader], mosaic: MemberMosaic, nodata: float | None,
                      out_dir: str) -> str:
    """Write the members' VRT under a name made from its content (an unchanged dataset keeps its
    file and modification time, a changed one gets a new file) and return its path."""
    first = headers[0]
    by_path = {h.path: h for h in headers}
    src_nodata = nodata if nodata is not None else first.nodata
    # The members' sizes and modification times are part of the text, so that a member changed in
    # place (same geometry, new pixels) also makes a new VRT, and its tiles are made again.
    stamps = json.dumps([[m.path, by_path[m.path].size_bytes, by_path[m.path].mtime_ns] for m in mosaic.members])
    metadata = {"WORKFLOW_MEMBERS": str(len(mosaic.members)),
                "WORKFLOW_MEMBERS_STAMP": hashlib.sha256(stamps.encode()).hexdigest()}
    bands = []
    for band in range(1, first.count + 1):
        sources = [Source(m.path, band, m.col_off, m.row_off, m.width, m.height, first.dtype, src_nodata,
                          by_path[m.path].block_shape) for m in mosaic.members]
        description = first.descriptions[band - 1] if len(first.descriptions) >= band else ""
        bands.append(Band(first.dtype, nodata, description=description, sources=sources, metadata=metadata))
    text = vrt_xml(mosaic.width, mosaic.height, first.crs, mosaic.transform, bands)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = os.path.abspath(os.path.join(out_dir, f"{dataset}-{digest}.vrt"))
    if not os.path.exists(path):
        os.makedirs(out_dir, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write(text)
    return path


def member_tiles(mosaic: MemberMosaic, corners_cols: np.ndarray, corners_rows: np.ndarray, ok: np.ndarray,
                 margin: float) -> np.ndarray:
    """Boolean (tile_rows, tile_cols): the tiles whose source area meets a member.

    ``corners_cols``/``corners_rows``: sample points of every tile (tile_rows, tile_cols, n) in the
    mosaic's pixels; ``ok`` where they could be moved there. A tile with a point that could not be
    moved is kept (it cannot be told apart). ``margin``: source pixels around each tile's area
    (the resampling kernel's reach and the rounding of chunk windows)."""
    c = np.where(ok, corners_cols, np.nan)
    r = np.where(ok, corners_rows, np.nan)
    lo_c, hi_c = np.nanmin(c, axis=2) - margin, np.nanmax(c, axis=2) + margin
    lo_r, hi_r = np.nanmin(r, axis=2) - margin, np.nanmax(r, axis=2) + margin
    keep = ~ok.all(axis=2)
    for m in mosaic.members:
        keep |= (hi_c >= m.col_off) & (lo_c <= m.col_off + m.width) & (hi_r >= m.row_off) & (
            lo_r <= m.row_off + m.height)
    return keep


def failing_member(vrt_path: str, window: Window, band: int) -> tuple[str, str] | None:
    """The first source of a VRT under ``window`` that cannot be opened or read there, and why;
    None if every one can. Called after a read of the VRT failed, to name the file behind it."""
    try:
        root = ET.parse(vrt_path).getroot()
    except (OSError, ET.ParseError):
        return None
    bands = root.findall("VRTRasterBand")
    if not 1 <= band <= len(bands):
        return None
    w0, h0 = window.col_off, window.row_off
    w1, h1 = w0 + window.width, h0 + window.height
    for source in bands[band - 1]:
        name, dst, src = source.find("SourceFilename"), source.find("DstRect"), source.find("SrcRect")
        if name is None or dst is None or src is None:
            continue
        path = name.text or ""
        if name.get("relativeToVRT") == "1":
            path = os.path.join(os.path.dirname(vrt_path), path)
        x, y = float(dst.get("xOff")), float(dst.get("yOff"))
        dw, dh = float(dst.get("xSize")), float(dst.get("ySize"))
        if x >= w1 or y >= h1 or x + dw <= w0 or y + dh <= h0:
            continue
        # The part of the source under the window (the members' VRT never scales its sources).
        sx, sy = float(src.get("xOff")), float(src.get("yOff"))
        fx, fy = float(src.get("xSize")) / dw, float(src.get("ySize")) / dh
        c0, c1 = (max(w0, x) - x) * fx + sx, (min(w1, x + dw) - x) * fx + sx
        r0, r1 = (max(h0, y) - y) * fy + sy, (min(h1, y + dh) - y) * fy + sy
        sb = source.find("SourceBand")
        try:
            with rasterio.open(path) as m:
                m.read(int(sb.text) if sb is not None else 1,
                       window=Window(int(c0), int(r0), max(1, math.ceil(c1) - int(c0)),
                                     max(1, math.ceil(r1) - int(r0))))
        except GDAL_ERRORS as exc:
            return path, str(exc)
    return None


@lru_cache(maxsize=8)
def _planned_members(vrt_path: str) -> tuple[tuple[str, ...], str] | None:
    """(member paths in painting order, the digest of their planned stamps) of a members' VRT
    written by write_members_vrt; None for any other file."""
    if not vrt_path.endswith(".vrt") or not os.path.isfile(vrt_path):
        return None
    try:
        band = ET.parse(vrt_path).getroot().find("VRTRasterBand")
    except ET.ParseError:
        return None
    if band is None:
        return None
    digest = next((m.text for m in band.iter("MDI") if m.get("key") == "WORKFLOW_MEMBERS_STAMP"), None)
    if digest is None:
        return None
    return tuple(s.text or "" for s in band.iter("SourceFilename")), digest


# Checking a local member costs a stat: each tile checks every member of a dataset up to this many
# members; beyond, an answer is reused for MEMBER_CHECK_REUSE_S (a change is then found within that
# time, not before the next tile), so that 100,000 members do not cost 100,000 stats per tile.
# A remote member costs a HEAD request (16 at a time): their answer is reused for
# REMOTE_MEMBER_CHECK_REUSE_S, whatever their number.
MEMBER_CHECK_EVERY_TILE = 1000
MEMBER_CHECK_REUSE_S = 10.0
REMOTE_MEMBER_CHECK_REUSE_S = 60.0
_member_checks: dict[str, tuple[float, str | None]] = {}


def members_changed(vrt_path: str) -> str | None:
    """Why the members of a dataset of many files are no longer those the run planned with (one
    changed, is gone), or None."""
    planned = _planned_members(vrt_path)
    if planned is None:
        return None
    paths, digest = planned
    remote = any(is_remote(p) for p in paths)
    if not remote and len(paths) <= MEMBER_CHECK_EVERY_TILE:
        return _members_changed(paths, digest)
    checked_at, why = _member_checks.get(vrt_path, (-math.inf, None))
    reuse_s = REMOTE_MEMBER_CHECK_REUSE_S if remote else MEMBER_CHECK_REUSE_S
    if why is None and time.monotonic() - checked_at < reuse_s:
        return None
    why = _members_changed(paths, digest)
    _member_checks[vrt_path] = (time.monotonic(), why)
    return why


def _members_changed(paths: tuple[str, ...], digest: str) -> str | None:
    try:
        now = [[p, *s] for p, s in zip(paths, stamps(list(paths)))]
    except OSError as exc:
        return f"one of its {len(paths)} member files is gone since the run was planned ({exc.filename}): run again"
    if hashlib.sha256(json.dumps(now).encode()).hexdigest() == digest:
        return None
    return (f"one of its {len(paths)} member files changed since the run was planned (size or modification time, "
            "or ETag for a remote one): "
            "run again, and the next run plans with it")
