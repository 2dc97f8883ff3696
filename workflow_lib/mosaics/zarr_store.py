"""The stack as one Zarr v3 store, ``results/stack.zarr``, written in parallel by the batch jobs.

One array per dataset, with its own data type and fill value (its nodata), dims ``(y, x)``, or
``(<dataset>_band, y, x)`` for a dataset of several bands; shared ``x`` and ``y`` coordinates (pixel
centres) and a ``spatial_ref`` variable carrying the CRS and transform as CF's grid mapping does,
so that ``xarray.open_zarr`` with rioxarray (or odc-geo) gives them; the same as GeoZarr's ``proj:``
and ``spatial:`` attributes on the root group.

Chunks are tiles: the batch job that makes a tile writes its chunk, and no other job ever writes
it, so no lock is needed and no step after the batches reads every pixel. The job encodes each
chunk itself (as zarr-python would) and writes it under a temporary name, then renames it. A
dataset's array is (re)created by its register job, before its batches; when what shapes its
chunks changed (the grid, the data type, the tiles' digest: the array's attribute SPEC_ATTRIBUTE
says), its old chunks are removed, so a changed dataset invalidates its own array and no other.
The root's consolidated metadata (what ``open_zarr`` reads at once) is written last, by rule
zarr_store, which reads no full-resolution pixel.

Overview levels (docs/how-it-works.md, "The Zarr store"): the group ``overviews/<f>`` holds every
dataset at pixels f times larger. Each tile's batch job writes its part of the finer levels (those
whose chunk, a tile's part, keeps LEVEL_MIN_CHUNK pixels) from its full-resolution pixels, before
its own chunk; rule zarr_store makes the coarser levels from the last of those and its counts of
valid pixels (coarse_levels). The root's ``multiscales`` attribute lists them, as GDAL 3.13 does.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import struct
import threading
import warnings

import numpy as np
import rasterio
from rasterio.enums import WktVersion

from workflow_lib.atomic import remove_stale_temporaries, shared_mode, temporary_prefix, write_json_atomic
from workflow_lib.domain import (CHUNK_TEMPORARY_SUFFIX, ZARR_BAND_SUFFIX, ZARR_COORDINATES, ZARR_OVERVIEWS,
                                 TileIndex, chunk_path, count_array, level_array, tiles_without_chunks)
from workflow_lib.engines.blocks import block_centres, to_output, valid_mask
from workflow_lib.errors import OutputWriteError
from workflow_lib.planning.batches import shard_index
from workflow_lib.planning.digest import tile_digest
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.plan import DatasetPlan

log = logging.getLogger(__name__)

# Chunks are compressed as tiles are (ZSTD level 1): fast to write, read by every Zarr library.
ZSTD_LEVEL = 1
# Written into each array's attributes: a digest of what its chunks depend on.
SPEC_ATTRIBUTE = "onegrid:spec"
GRID_ATTRIBUTE = "onegrid:grid"
GRID_MAPPING = ZARR_COORDINATES[2]
# The multiscales convention (zarr-conventions/multiscales), declared in the root's zarr_conventions.
MULTISCALES_CONVENTION = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347", "name": "multiscales",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
    "description": "Multiscale layout of zarr datasets"}


def _zarr():
    # Imported when a job writes the store: the Snakefile's parse and the other jobs do not pay it.
    import zarr

    return zarr


def band_dimension(dataset: DatasetPlan) -> str | None:
    """The name of a dataset's band dimension, its own (datasets differ in their bands), or None."""
    return f"{dataset.name}{ZARR_BAND_SUFFIX}" if len(dataset.band_names) > 1 else None


def fill_value_attribute(value: float, dtype: str):
    """``_FillValue`` as xarray encodes it in Zarr v3 attributes (a float as the base64 of its
    little-endian double, which also carries NaN): xarray masks this value as missing."""
    if np.dtype(dtype).kind == "f":
        return base64.standard_b64encode(struct.pack("<d", float(value))).decode()
    return int(value)


def array_spec(grid: TargetGrid, dataset: DatasetPlan) -> dict:
    """Everything the dataset's chunks depend on; its digest marks the array (SPEC_ATTRIBUTE)."""
    settings = dataset.settings
    bands = len(dataset.band_names) if band_dimension(dataset) else 0
    return {"shape": [grid.height, grid.width], "chunk": grid.tile_size, "bands": bands,
            "dtype": settings.dst_dtype, "nodata": repr(float(settings.dst_nodata)),
            "crs": grid.crs.to_wkt(), "transform": list(grid.transform)[:6],
            "tiles": tile_digest(grid, dataset)} | ({"shard": list(dataset.shard)} if dataset.shard else {})


def spec_digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def root_attributes(grid: TargetGrid, factor: int = 1, level_0: tuple[str, int] | None = None) -> dict:
    """GeoZarr's projection and spatial attributes of the whole store (all arrays share the grid),
    or of an overview level's group (``factor``). ``level_0``: the array that the root's
    ``multiscales`` names as its full resolution, and its number of dimensions (the store's
    finished: finish_store)."""
    level = grid.level(factor) if factor > 1 else grid
    t = level.transform
    left, bottom, right, top = level.bounds
    attrs = {"proj:wkt2": grid.crs.to_wkt(version=WktVersion.WKT2_2019), "spatial:dimensions": ["y", "x"],
             "spatial:transform": [t.a, t.b, t.c, t.d, t.e, t.f], "spatial:shape": [level.height, level.width],
             "spatial:bbox": [left, bottom, right, top], "spatial:registration": "pixel",
             "title": "onegrid stack: every dataset on one grid" + (f", overview 1/{factor}" if factor > 1 else "")}
    code = grid.crs.to_string() if grid.crs.to_epsg() else None
    if code:
        attrs["proj:code"] = code
    if factor == 1 and level_0 and grid.overview_factors():
        attrs |= {"zarr_conventions": [MULTISCALES_CONVENTION], "multiscales": multiscales(grid, *level_0)}
    return attrs


def multiscales(grid: TargetGrid, base: str, ndim: int) -> dict:
    """The root's ``multiscales`` attribute, as GDAL 3.13's Zarr driver writes one for arrays in a
    group with their overviews in child groups (ZarrV3Group::GenerateMultiscalesMetadata): the
    first entry names one of the root's own arrays, ``base`` (the convention's paths name children
    of the group that holds it, so the root itself cannot be named), and each overview group
    follows, derived from it (every level is made from the full resolution), with its scale and
    its absolute ``spatial:shape`` and ``spatial:transform``. Readers find every other dataset by
    its name in each group."""
    lead = [1.0] * (ndim - 2)
    layout = [{"asset": base, "transform": {"scale": [*lead, 1.0, 1.0]}}]
    for f in grid.overview_factors():
        level = grid.level(f)
        t = level.transform
        layout.append({"asset": f"{ZARR_OVERVIEWS}/{f}", "derived_from": base,
                       "transform": {"scale": [*lead, float(f), float(f)], "translation": [0.0] * ndim},
                       "spatial:shape": [level.height, level.width],
                       "spatial:transform": [t.a, t.b, t.c, t.d, t.e, t.f], "onegrid:factor": f})
    return {"layout": layout, "resampling_method": "average",
            "onegrid:levels": "each overview group holds every dataset of the root, made from its full "
                              "resolution; categorical datasets by nearest (each array's resampling_method)"}


def _grid_mapping_attributes(grid: TargetGrid) -> dict:
    wkt = grid.crs.to_wkt()
    # crs_wkt is CF's; spatial_ref and GeoTransform are what GDAL and rioxarray also read. The
    # grid's digest says which grid the coordinates were made for (finish_store).
    return {"crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": " ".join(repr(v) for v in grid.transform.to_gdal()),
            GRID_ATTRIBUTE: grid_digest(grid)}


def grid_digest(grid: TargetGrid) -> str:
    return spec_digest({"crs": grid.crs.to_wkt(), "transform": list(grid.transform)[:6],
                        "shape": [grid.height, grid.width]})


def ensure_store(store: str, grid: TargetGrid) -> None:
    """The store's root group and its coordinates, if missing. Several jobs may make them at once:
    none replaces what another made, and each writes the same bytes, each file atomically. (If the
    grid changed, rule zarr_store rewrites them at the end: write_coordinates.)"""
    for factor in (1, *grid.overview_factors()):
        path = store if factor == 1 else os.path.join(store, ZARR_OVERVIEWS, str(factor))
        if os.path.exists(os.path.join(path, "zarr.json")) and all(_has_chunks(path, n) for n in ZARR_COORDINATES):
            continue
        group = _open_group(store, "" if factor == 1 else f"{ZARR_OVERVIEWS}/{factor}", root_attributes(grid, factor))
        write_coordinates(group, grid.level(factor) if factor > 1 else grid, _create,
                          skip=lambda name, path=path: _has_chunks(path, name))


def _open_group(store: str, path: str, attributes: dict):
    """The group at ``path``: created with ``attributes``, or the one another job created
    meanwhile (the register jobs of several datasets make the same groups at once; zarr-python
    refuses to create a group that appeared between its look and its write)."""
    zarr = _zarr()
    from zarr.errors import ContainsGroupError

    try:
        return zarr.open_group(store, path=path, mode="a", zarr_format=3, attributes=attributes)
    except ContainsGroupError:
        return zarr.open_group(store, path=path, mode="r+", zarr_format=3)


def write_coordinates(root, grid: TargetGrid, create, skip=lambda name: False) -> None:
    """``x`` and ``y`` (pixel centres) and the grid mapping, each made by ``create(root, name, **spec)``
    unless ``skip(name)``."""
    t = grid.transform
    units = grid.crs.linear_units or "m"
    for name, n, first, step, axis in (("x", grid.width, t.c, t.a, "X"), ("y", grid.height, t.f, t.e, "Y")):
        if skip(name):
            continue
        if grid.crs.is_geographic:
            kind = ("longitude", "degrees_east") if axis == "X" else ("latitude", "degrees_north")
        else:
            kind = (f"projection_{name}_coordinate", "m" if units in ("metre", "meter") else units)
        coord = create(root, name, shape=(n,), dtype="float64", chunks=(n,), dimension_names=(name,),
                       attributes={"standard_name": kind[0], "units": kind[1], "axis": axis})
        coord[:] = first + (np.arange(n) + 0.5) * step
    if not skip(GRID_MAPPING):
        ref = create(root, GRID_MAPPING, shape=(), dtype="int32", dimension_names=(),
                     attributes=_grid_mapping_attributes(grid))
        ref[...] = 0


def _has_chunks(store: str, name: str) -> bool:
    folder = os.path.join(store, name)
    return os.path.exists(os.path.join(folder, "zarr.json")) and (
        name == GRID_MAPPING or os.path.isdir(os.path.join(folder, "c")))


def _create(root, name: str, **spec):
    """The array ``name`` of ``root``: created, or the one another job created meanwhile."""
    from zarr.errors import ContainsArrayError

    try:
        return root.create_array(name, **spec)
    except ContainsArrayError:
        return root[name]


def _spec_of(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "zarr.json")) as f:
            return json.load(f)["attributes"][SPEC_ATTRIBUTE]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _tile_part_arrays(grid: TargetGrid, dataset: DatasetPlan) -> dict[str, tuple[int, bool]]:
    """The arrays each tile of the dataset writes its part of, finest first, the dataset's own
    last: path -> (factor, whether it is a count of valid pixels)."""
    factors = grid.tile_level_factors()
    parts = {level_array(dataset.name, f): (f, False) for f in factors}
    if dataset.zarr_counts(grid):
        parts[count_array(dataset.name)] = (factors[-1], True)
    return parts | {dataset.name: (1, False)}


def prepare_array(store: str, grid: TargetGrid, dataset: DatasetPlan, replace: bool = True) -> bool:
    """Create the dataset's array and those of its overview levels made from the tiles (and their
    counts of valid pixels), or keep those created with the same spec. Returns True when one was
    (re)created: its old chunks, made for other settings, are gone. ``replace=False`` (a batch
    job): never remove an array, only create a missing one."""
    zarr = _zarr()
    ensure_store(store, grid)
    digest = spec_digest(array_spec(grid, dataset))
    paths = _tile_part_arrays(grid, dataset)
    stale = {path: made for path, made in paths.items() if _spec_of(os.path.join(store, path)) != digest}
    if not stale:
        return False
    settings = dataset.settings
    band_dim = band_dimension(dataset)
    root = zarr.open_group(store, mode="a", zarr_format=3)
    unused_counts = os.path.join(store, count_array(dataset.name))
    if replace and count_array(dataset.name) not in paths and os.path.isdir(unused_counts):
        shutil.rmtree(unused_counts)  # made for a continuous method, or for coarser levels, before
    for path, (f, counts) in stale.items():
        folder = os.path.join(store, path)
        labels = f"{path}{ZARR_BAND_SUFFIX}"  # its band labels, beside it
        if replace:
            for old in (folder, os.path.join(store, labels)):
                if os.path.isdir(old):
                    log.info("zarr array %s: made with other settings, removed with its chunks", old)
                    shutil.rmtree(old)
        level = grid.level(f) if f > 1 else grid
        shape, chunks, dims = (level.height, level.width), (level.tile_size, level.tile_size), ("y", "x")
        if band_dim:
            n = len(dataset.band_names)
            shape, chunks, dims = (n, *shape), (n, *chunks), (band_dim, *dims)
        if counts:
            _create(root, path, shape=shape, chunks=chunks, shards=shard_shape(grid, dataset, f), dtype="uint32",
                    fill_value=0, dimension_names=dims,
                    attributes={SPEC_ATTRIBUTE: digest, "onegrid:factor": f,
                                "long_name": f"valid pixels of {dataset.name} in each pixel of overview 1/{f}"},
                    compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL))
            continue
        # Levels are made as the mosaic's overviews are: nearest for categorical methods, else average.
        method = settings.method.value if f == 1 else "nearest" if settings.method.is_categorical else "average"
        attrs = {SPEC_ATTRIBUTE: digest, "grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING,
                 "long_name": dataset.name, "resampling_method": method,
                 "_FillValue": fill_value_attribute(settings.dst_nodata, settings.dst_dtype)}
        _create(root, path, shape=shape, chunks=chunks, shards=shard_shape(grid, dataset, f),
                dtype=settings.dst_dtype, fill_value=settings.dst_nodata, dimension_names=dims, attributes=attrs,
                compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL))
        if band_dim:
            made = _create(root, labels, shape=(n,), dtype=str, chunks=(n,), dimension_names=(band_dim,))
            made[:] = np.array(dataset.band_names)
    return True


def _ensure_arrays(store: str, grid: TargetGrid, dataset: DatasetPlan) -> None:
    """What a batch job does first: the dataset's arrays that were removed since its register job
    ran (or zarr was not among the formats then) are made as that job makes them, never replacing
    one that another batch job of it has just made."""
    missing = [p for p in _tile_part_arrays(grid, dataset) if not os.path.exists(os.path.join(store, p, "zarr.json"))]
    if missing:
        log.info("zarr array(s) %s missing from %s: made again", ", ".join(missing), store)
        prepare_array(store, grid, dataset, replace=False)


def chunk_codecs(dtype) -> list[dict]:
    """The codecs of a chunk as zarr-python 3.1 writes them by default for prepare_array's
    arguments: bytes (little-endian) then ZSTD. ChunkWriter and ShardWriter encode chunks so."""
    one_byte = np.dtype(dtype).itemsize == 1  # no byte order to say
    return [{"name": "bytes"} if one_byte else {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}}]


def _written_array(store: str, path: str, codecs: list[dict], dtype) -> tuple[object, np.dtype]:
    """The fill value and little-endian data type of the array at ``path``, whose chunks a batch
    job encodes itself; read from its zarr.json (a batch job never imports zarr-python, which
    would cost it a third of a second). Raises OutputWriteError if the array is not encoded as
    ``codecs`` with ``dtype``: an array made by another version of this workflow or by hand."""
    folder = os.path.join(store, path)
    try:
        with open(os.path.join(folder, "zarr.json")) as f:
            meta = json.load(f)
        found = (meta["codecs"], meta["data_type"])
        fill = meta["fill_value"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputWriteError(folder, exc) from exc
    if found != (codecs, np.dtype(dtype).name):
        raise OutputWriteError(folder, RuntimeError(
            f"its codecs and data type are {found}, not {(codecs, np.dtype(dtype).name)}, which this workflow writes"))
    try:  # Zarr v3 writes the floats JSON cannot hold as strings ("NaN", "Infinity", "-Infinity")
        fill = np.dtype(dtype).type(float(fill) if isinstance(fill, str) else fill)
    except (ValueError, TypeError, OverflowError) as exc:
        raise OutputWriteError(folder, RuntimeError(f"its fill value {fill!r} is not one this workflow writes")
                               ) from exc
    return fill, np.dtype(dtype).newbyteorder("<")


def _written_parts(store: str, grid: TargetGrid, dataset: DatasetPlan, sharded: bool) -> dict[str, tuple]:
    """The arrays a batch job writes each tile's parts of (_tile_part_arrays, the full resolution
    last), each as (chunk side, fill value, little-endian data type), checked against their
    zarr.json (_written_array): plain chunks, or ``sharded`` as ShardWriter writes them."""
    parts = {}
    for path, (factor, counts) in _tile_part_arrays(grid, dataset).items():
        dtype = "uint32" if counts else dataset.settings.dst_dtype
        codecs = [_sharding_layout(grid, dataset, factor, dtype)] if sharded else chunk_codecs(dtype)
        parts[path] = (grid.tile_size // factor, *_written_array(store, path, codecs, dtype))
    return parts


def _encode_chunk(data: np.ndarray, side: int, fill, dtype: np.dtype, multiband: bool, compressor) -> bytes:
    """A tile's part of an array (bands, rows, columns) as its chunk's bytes (chunk_codecs)."""
    if data.shape[1:] != (side, side):  # an edge tile: its chunk is whole, padded with the fill value
        full = np.full((data.shape[0], side, side), fill, dtype=data.dtype)
        full[:, :data.shape[1], :data.shape[2]] = data
        data = full
    data = data if multiband else data[0]
    return compressor.encode(np.ascontiguousarray(data, dtype=dtype).tobytes())


class ChunkWriter:
    """What a batch job does for the store: write each tile it makes (and each tile it keeps whose
    chunk is missing: the store was removed, or the job was killed between the two) as its chunk,
    and its part of each overview level and of their counts as theirs, the full resolution's last,
    so that its presence says that the tile's parts are written too.

    The chunks are encoded here (chunk_codecs) and each written under a temporary name and renamed,
    as zarr-python would, without its per-write cost (2 ms a chunk, five or more chunks a tile).
    A tile of nodata is a chunk too (zarr-python skips writing those by default): a chunk's presence
    is what says that its tile is done."""

    def __init__(self, store: str, grid: TargetGrid, dataset: DatasetPlan, tile_folder: str):
        from numcodecs import Zstd

        self.store, self.grid, self.dataset, self.tile_folder = store, grid, dataset, tile_folder
        _ensure_arrays(store, grid, dataset)
        self.multiband = bool(band_dimension(dataset))
        self.compressor = Zstd(level=ZSTD_LEVEL)
        self.arrays = _written_parts(store, grid, dataset, sharded=False)

    def write(self, index: TileIndex, pixels: np.ndarray | None = None) -> None:
        """Write the chunks of a tile from its pixels (bands, rows, columns), or from its file."""
        if pixels is None:
            with rasterio.open(index.path(self.tile_folder)) as src:
                pixels = src.read()
        made = tile_parts(pixels, self.grid, self.dataset)
        for path, (side, fill, dtype) in self.arrays.items():
            target = chunk_path(self.store, path, index, self.multiband)
            _write_chunk(target, _encode_chunk(made[path], side, fill, dtype, self.multiband, self.compressor))

    def fill_missing(self, tiles) -> list[TileIndex]:
        """Write the chunks of ``tiles`` (on disk already) that are missing; returns them."""
        missing = tiles_without_chunks(self.store, self.dataset.name, self.multiband, tiles,
                                       self.dataset.level_arrays(self.grid))
        for index in missing:
            self.write(index)
        if missing:
            log.info("zarr array of %s: %d chunk(s) of tiles already on disk written", self.dataset.name,
                     len(missing))
        return missing

    def close(self, complete: bool) -> None:
        """Each chunk is complete once written: nothing is left to do."""


def _write_chunk(target: str, encoded: bytes) -> None:
    # One temporary name per chunk: only the job that makes a tile writes its chunks (one thread a
    # tile), and a killed writer's leftover makes the tile's chunks count as missing
    # (tiles_without_chunks), so they are written again and the leftover is renamed away.
    tmp = f"{target}{CHUNK_TEMPORARY_SUFFIX}"
    try:
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            f = open(tmp, "wb")
        with f:
            f.write(encoded)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputWriteError(target, exc) from exc


def tile_parts(data: np.ndarray, grid: TargetGrid, dataset: DatasetPlan) -> dict[str, np.ndarray]:
    """What a tile of pixels ``data`` (bands, rows, columns) puts into each array of the store, by
    path (_tile_part_arrays): its pixels, its part of each overview level made from the tiles, the
    counts of valid pixels at the last of them.

    Each level pixel comes from the tile's full-resolution pixels (never from the level before's
    values): the mean of its block's valid pixels (each level's sums and counts from the finer
    one's, in double precision), or for categorical methods the pixel at the block's centre, as
    the mosaic's overviews (mosaics.overviews). Tiles start on multiples of the tile size, which
    every factor divides: a tile's blocks are the level's, and only the grid's last row and column
    of tiles have partial ones. NumPy only: a batch job that does not use the compiled kernels
    must not load numba (its memory is not budgeted for it)."""
    settings = dataset.settings
    factors = grid.tile_level_factors()
    made = {dataset.name: data}
    if settings.method.is_categorical:
        for f in factors:
            made[level_array(dataset.name, f)] = data[:, block_centres(data.shape[1], f)][
                :, :, block_centres(data.shape[2], f)]
        return made
    valid = valid_mask(data, settings.dst_nodata)
    sums, counts = (data, np.ones(data.shape, bool)) if valid is None else (np.where(valid, data, 0), valid)
    done = 1
    for f in factors:  # sums in double precision from the first level on, without a copy of the tile in it
        sums, counts = _block_sums(sums, f // done, np.float64), _block_sums(counts, f // done, np.int64)
        done = f
        with np.errstate(invalid="ignore", divide="ignore"):
            made[level_array(dataset.name, f)] = to_output(sums / np.maximum(counts, 1), counts > 0,
                                                           settings.dst_dtype, settings.dst_nodata)
    if dataset.zarr_counts(grid):
        made[count_array(dataset.name)] = counts.astype(np.uint32)
    return made


def _block_sums(a: np.ndarray, k: int, dtype=None) -> np.ndarray:
    """Sums over k x k blocks of (bands, rows, columns), partial at the right and bottom, in
    ``dtype`` (``a``'s own by default)."""
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    b, h, w = a.shape
    if h % k or w % k:
        padded = np.zeros((b, -(-h // k) * k, -(-w // k) * k), a.dtype)
        padded[:, :h, :w] = a
        a = padded
    if k == 2:  # every level's step: four strided additions, several times faster than a reshaped sum
        out = a[:, 0::2, 0::2].astype(dtype)
        out += a[:, 1::2, 0::2]
        out += a[:, 0::2, 1::2]
        out += a[:, 1::2, 1::2]
        return out
    return a.reshape(b, a.shape[1] // k, k, a.shape[2] // k, k).sum(axis=(2, 4), dtype=dtype)


def shard_shape(grid: TargetGrid, dataset: DatasetPlan, factor: int = 1) -> tuple[int, ...] | None:
    """A shard of the dataset's array (or of an overview level's: ``factor``) in pixels, a batch's
    rectangle of tiles, or None."""
    if not dataset.shard:
        return None
    side = grid.tile_size // factor
    shape = (dataset.shard[0] * side, dataset.shard[1] * side)
    return (len(dataset.band_names), *shape) if band_dimension(dataset) else shape


def _sharding_layout(grid: TargetGrid, dataset: DatasetPlan, factor: int = 1, dtype: str | None = None) -> dict:
    """The sharding codec that ShardWriter's files follow for the dataset's array (or an overview
    level's: ``factor``; or its counts: ``dtype``)."""
    ts = grid.tile_size // factor
    return _layout([len(dataset.band_names), ts, ts] if band_dimension(dataset) else [ts, ts],
                   dtype or dataset.settings.dst_dtype)


def _layout(chunk: list[int], dtype) -> dict:
    """The sharding codec as zarr-python 3.1 writes it by default for prepare_array's arguments:
    chunks encoded as chunk_codecs, an index of (offset, length) pairs at the end, itself
    little-endian with a CRC32C."""
    return {"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(chunk), "codecs": chunk_codecs(dtype),
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": "end"}}


# An absent chunk in a shard's index (Zarr v3's sharding codec).
_NO_CHUNK = 2 ** 64 - 1


class _ShardFile:
    """One shard being written: a temporary file that chunks are appended to, and their index."""

    def __init__(self, path: str, side: int, fill, dtype: np.dtype, multiband: bool, shard: tuple[int, int]):
        self.path, self.side, self.fill, self.dtype, self.multiband = path, side, fill, dtype, multiband
        # (offset, length) per chunk of the shard, in C order: with bands, the band chunk comes first.
        self.lead = (0,) if multiband else ()
        self.index = np.full((*((1,) if multiband else ()), *shard, 2), _NO_CHUNK, dtype="<u8")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        remove_stale_temporaries(path)
        self.tmp = f"{temporary_prefix(path)}{os.getpid()}.partial"
        self.file = open(self.tmp, "wb")

    def encode(self, data: np.ndarray, compressor) -> bytes:
        return _encode_chunk(data, self.side, self.fill, self.dtype, self.multiband, compressor)

    def append(self, at: tuple[int, int], encoded: bytes) -> None:
        """Under the writer's lock."""
        try:
            offset = self.file.tell()
            self.file.write(encoded)
        except OSError as exc:
            raise OutputWriteError(self.path, exc) from exc
        self.index[(*self.lead, *at)] = (offset, len(encoded))

    def finish(self) -> None:
        raw = self.index.tobytes()
        self.file.write(raw + struct.pack("<I", _crc32c(raw)))
        self.file.close()
        os.chmod(self.tmp, shared_mode())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


class ShardWriter:
    """What a batch job does for the store when the dataset's array is sharded (more than
    planning.batches.SHARD_MIN_TILES tiles): its batch is one shard, one file, written once, and
    one more of each overview level made from the tiles (and of their counts). Each tile's chunks
    are encoded in the worker thread that made it and appended to the shards' temporary files (a
    lock orders the appends within the job; no other job writes these shards); ``close`` writes
    the indexes and renames the files, the full resolution's last, or, for a batch that did not
    complete, removes them. A shard under its final name therefore holds every tile of its batch,
    and the full resolution's says that the levels' are there too."""

    def __init__(self, store: str, grid: TargetGrid, dataset: DatasetPlan, tile_folder: str, batch: str):
        from numcodecs import Zstd

        self.grid, self.dataset, self.tile_folder = grid, dataset, tile_folder
        _ensure_arrays(store, grid, dataset)
        parts = _written_parts(store, grid, dataset, sharded=True)  # checked before any file is opened
        self.compressor = Zstd(level=ZSTD_LEVEL)
        self.shard = shard_index(batch, dataset.shard)
        self.origin = (self.shard.row * dataset.shard[0], self.shard.col * dataset.shard[1])
        multiband = bool(band_dimension(dataset))
        self.files: dict[str, _ShardFile] = {}
        try:
            for path, (side, fill, dtype) in parts.items():
                self.files[path] = _ShardFile(chunk_path(store, path, self.shard, multiband), side, fill, dtype,
                                              multiband, dataset.shard)
        except BaseException:
            for shard in self.files.values():
                shard.discard()
            raise
        self.path = self.files[dataset.name].path
        self.lock = threading.Lock()
        self.written: set[TileIndex] = set()

    def write(self, index: TileIndex, pixels: np.ndarray | None = None) -> None:
        """Append the chunks of a tile from its pixels, or from its file (what the batch's worker
        threads call)."""
        if pixels is None:
            with rasterio.open(index.path(self.tile_folder)) as src:
                pixels = src.read()
        self.write_array(index, pixels)

    def write_array(self, index: TileIndex, data: np.ndarray) -> None:
        """Append a tile's chunks from its pixels, (bands, rows, columns)."""
        made = tile_parts(data, self.grid, self.dataset)
        encoded = {path: shard.encode(made[path], self.compressor) for path, shard in self.files.items()}
        at = (index.row - self.origin[0], index.col - self.origin[1])
        with self.lock:
            for path, shard in self.files.items():
                shard.append(at, encoded[path])
            self.written.add(index)

    def fill_missing(self, tiles) -> list[TileIndex]:
        """Append the chunks of ``tiles`` (kept on disk, not made by this job): the shards are
        rewritten whole, so every tile of the batch goes in."""
        missing = [t for t in tiles if t not in self.written]
        for index in missing:
            self.write(index)
        return missing

    def close(self, complete: bool) -> None:
        current = self.path
        try:
            if complete:
                for shard in self.files.values():  # the full resolution's last
                    current = shard.path
                    shard.finish()
                log.info("zarr shard %s: %d chunk(s)%s", self.path, len(self.written),
                         f", and {len(self.files) - 1} of its overview levels" if len(self.files) > 1 else "")
        except OSError as exc:
            raise OutputWriteError(current, exc) from exc
        finally:
            for shard in self.files.values():
                shard.discard()


def _crc32c(data: bytes) -> int:
    import google_crc32c  # zarr-python's own checksum library

    return google_crc32c.value(data)


def finish_store(store: str, grid: TargetGrid, names: list[str]) -> list[str]:
    """Remove the arrays of datasets no longer in the run (and overview levels no longer made), and
    write the consolidated metadata (every array's, read by ``xarray.open_zarr`` at once) of each
    level's group, then of the root. Returns the removed paths, relative to the store."""
    zarr = _zarr()
    # Which grid the coordinates were made for, before ensure_store (which makes missing ones for
    # this grid; Snakemake removes the root's zarr.json, this job's output, before it runs).
    try:
        with open(os.path.join(store, GRID_MAPPING, "zarr.json")) as f:
            made_for = json.load(f)["attributes"].get(GRID_ATTRIBUTE)
    except (OSError, ValueError, KeyError, TypeError):
        made_for = None
    factors = grid.overview_factors()
    removed = []
    if made_for is not None and made_for != grid_digest(grid):
        # Made by an earlier run on another grid: the coordinates of the root and of each level
        # are replaced, and the levels' attributes (the datasets' arrays were made again by the
        # register jobs, for this grid; no other job runs now).
        for f in factors:
            for name in (*ZARR_COORDINATES, "zarr.json"):
                path = os.path.join(store, ZARR_OVERVIEWS, str(f), name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.unlink(path)
        write_json_atomic(os.path.join(store, "zarr.json"),
                          {"zarr_format": 3, "node_type": "group", "attributes": root_attributes(grid)})
        write_coordinates(zarr.open_group(store, mode="r+"), grid,
                          lambda root, name, **spec: root.create_array(name, overwrite=True, **spec))
    ensure_store(store, grid)
    # The root's attributes, whatever made it (they list the levels of this grid); no other job runs.
    level_0 = None
    if names:  # the first dataset by name, as GDAL names one array of the group (multiscales)
        base = sorted(names)[0]
        with contextlib.suppress(OSError, ValueError, KeyError):
            with open(os.path.join(store, base, "zarr.json")) as f:
                level_0 = (base, len(json.load(f)["shape"]))
    write_json_atomic(os.path.join(store, "zarr.json"),
                      {"zarr_format": 3, "node_type": "group", "attributes": root_attributes(grid, level_0=level_0)})
    keep = set(names) | set(ZARR_COORDINATES) | {f"{n}{ZARR_BAND_SUFFIX}" for n in names}
    counts = os.path.dirname(count_array(""))
    for group, allowed in [("", keep | ({ZARR_OVERVIEWS} if factors else set())),
                           (ZARR_OVERVIEWS, {str(f) for f in factors} | {os.path.basename(counts)}),
                           (counts, set(names)), *((f"{ZARR_OVERVIEWS}/{f}", keep) for f in factors)]:
        folder = os.path.join(store, group)
        for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            if os.path.isdir(os.path.join(folder, entry)) and entry not in allowed:
                shutil.rmtree(os.path.join(folder, entry))
                removed.append(f"{group}/{entry}" if group else entry)
    for name in names:
        coarse_levels(store, grid, name)
    with warnings.catch_warnings():
        # zarr-python warns that consolidated metadata is its own extension of Zarr v3: it is what
        # xarray.open_zarr looks for first, and other readers ignore it.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        for f in factors:  # each level's own, for open_zarr(store, group="overviews/4")
            zarr.consolidate_metadata(store, path=f"{ZARR_OVERVIEWS}/{f}", zarr_format=3)
        zarr.consolidate_metadata(store, zarr_format=3)
    return removed


def coarse_levels(store: str, grid: TargetGrid, name: str) -> list[int]:
    """Make the dataset's overview levels coarser than those its tiles made (whose chunks would be
    smaller than LEVEL_MIN_CHUNK), from the last of those (the base): for a continuous method,
    each block's mean weighted by the base's counts of valid full-resolution pixels, so the full
    resolution's mean (to float32's rounding of the base's values); for a categorical one, the
    base pixel at the block's centre, itself a full-resolution pixel (never a mode of modes).

    The base is read once, a row of its chunks at a time, and each level made from the one before
    it in sums and counts, a pair of rows at a time: memory follows a row of chunks of the base
    and a row of chunks of each level (written whole), whatever the grid's height. Returns the
    factors made (none where the tiles made no level)."""
    zarr = _zarr()
    made_by_tiles, factors = grid.tile_level_factors(), grid.overview_factors()
    coarse = factors[len(made_by_tiles):]
    if not coarse or not os.path.exists(os.path.join(store, level_array(name, made_by_tiles[-1]), "zarr.json")):
        return []
    base = made_by_tiles[-1]
    finest = zarr.open_array(os.path.join(store, level_array(name, base)), mode="r")
    nearest = finest.attrs.get("resampling_method") == "nearest"
    counts = None if nearest else zarr.open_array(os.path.join(store, count_array(name)), mode="r")
    fill, dtype = finest.metadata.fill_value, str(finest.dtype)
    group = zarr.open_group(store, mode="r+")
    height, width = finest.shape[-2:]
    levels = []
    for f in coarse:
        level = grid.level(f)
        chunks = (min(grid.tile_size, level.height), min(grid.tile_size, level.width))
        out = group.create_array(level_array(name, f), shape=(*finest.shape[:-2], level.height, level.width),
                                 chunks=(*finest.shape[:-2], *chunks), dtype=dtype, fill_value=fill,
                                 dimension_names=finest.metadata.dimension_names, attributes=dict(finest.attrs),
                                 compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL), overwrite=True)
        if len(finest.shape) == 3:  # the band labels, as beside every array of several bands
            labels = zarr.open_array(os.path.join(store, f"{level_array(name, base)}{ZARR_BAND_SUFFIX}"), mode="r")
            copy = group.create_array(f"{level_array(name, f)}{ZARR_BAND_SUFFIX}", shape=labels.shape, dtype=str,
                                      chunks=labels.shape, dimension_names=labels.metadata.dimension_names,
                                      overwrite=True)
            copy[:] = labels[:]
        levels.append(_LevelWriter(out, f // base, height, width, chunks[0]))
    step = max(1, grid.tile_size // base)  # a row of the base's chunks
    base_rows = _ChunkRows(finest, os.path.join(store, level_array(name, base)))
    count_rows = None if nearest else _ChunkRows(counts, os.path.join(store, count_array(name)))
    for r0 in range(0, height, step):
        strip = base_rows.read(r0 // step)
        if nearest:
            for level in levels:
                level.pick(strip, r0)
            continue
        n = count_rows.read(r0 // step).astype(np.float64)
        sums = np.where(n > 0, strip.astype(np.float64), 0.0) * n
        last = r0 + step >= height
        for level in levels:  # each from the one before, in sums and counts
            sums, n = level.add(sums, n, last)
            with np.errstate(invalid="ignore", divide="ignore"):
                level.emit(to_output(sums / np.maximum(n, 1), n > 0, dtype, fill))
    for level in levels:
        level.flush()
    log.info("zarr overview levels 1/%s of %s made from level 1/%d", ", 1/".join(map(str, coarse)), name, base)
    return list(coarse)


class _ChunkRows:
    """An array read a row of its chunks at a time, (bands, rows, columns). A sharded array in the
    layout ShardWriter writes is read file by file, each shard's index once per row of shards:
    through zarr-python each chunk read from a shard reads the shard's index again (0.7 ms a
    chunk here: 12 minutes for the million tiles of bench/scale.py)."""

    def __init__(self, array, folder: str):
        self.array, self.folder = array, folder
        self.side = array.chunks[-1]
        self.height, self.width = array.shape[-2:]
        codecs = json.loads(json.dumps([c.to_dict() for c in array.metadata.codecs]))
        self.sharded = bool(array.shards) and codecs == [_layout(list(array.chunks), array.dtype)]
        if self.sharded:
            from numcodecs import Zstd

            self.decoder = Zstd()
            self.per_shard = (array.shards[-2] // self.side, array.shards[-1] // self.side)
            self.shard_cols = -(-self.width // array.shards[-1])
            self.multiband = array.ndim == 3
            self.bands = array.shape[0] if self.multiband else 1
            self.dtype = np.dtype(array.dtype).newbyteorder("<")
            self.loaded: tuple[int, list] | None = None

    def read(self, chunk_row: int) -> np.ndarray:
        rows = slice(chunk_row * self.side, min((chunk_row + 1) * self.side, self.height))
        if not self.sharded:
            return _bands_first(self.array[..., rows, :])
        shard_row, inner_row = divmod(chunk_row, self.per_shard[0])
        if self.loaded is None or self.loaded[0] != shard_row:
            self.loaded = (shard_row, [self._index(shard_row, c) for c in range(self.shard_cols)])
        side = self.side
        out = np.full((self.bands, side, self.shard_cols * self.per_shard[1] * side), self.array.metadata.fill_value,
                      dtype=self.dtype)
        for c, (path, index) in enumerate(self.loaded[1]):
            if index is None:
                continue
            with open(path, "rb") as f:
                for j in range(self.per_shard[1]):
                    offset, length = (int(v) for v in index[(0,) * self.multiband + (inner_row, j)])
                    if offset == _NO_CHUNK:
                        continue
                    f.seek(offset)
                    chunk = np.frombuffer(self.decoder.decode(f.read(length)), dtype=self.dtype)
                    col = (c * self.per_shard[1] + j) * side
                    out[:, :, col:col + side] = chunk.reshape(self.bands, side, side)
        return out[:, :rows.stop - rows.start, :self.width]

    def _index(self, shard_row: int, shard_col: int):
        path = os.path.join(self.folder, "c", *(("0",) if self.multiband else ()), str(shard_row), str(shard_col))
        size = self.per_shard[0] * self.per_shard[1] * 16
        try:
            with open(path, "rb") as f:
                f.seek(-(size + 4), os.SEEK_END)
                raw = f.read(size + 4)
        except FileNotFoundError:
            return path, None
        except OSError as exc:
            raise OutputWriteError(path, exc) from exc
        if struct.unpack("<I", raw[size:])[0] != _crc32c(raw[:size]):
            raise OutputWriteError(path, RuntimeError("its index does not match its checksum: remove it to rerun "
                                                      "its batch"))
        raw = raw[:size]
        lead = (1,) if self.multiband else ()
        return path, np.frombuffer(raw, dtype="<u8").reshape(*lead, *self.per_shard, 2)


def _bands_first(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 3 else a[np.newaxis]


class _LevelWriter:
    """One coarse level being made (coarse_levels): ``k`` base pixels a side per pixel. Its rows
    are written a row of chunks at a time."""

    def __init__(self, array, k: int, base_height: int, base_width: int, chunk_rows: int):
        self.array, self.k = array, k
        self.chunk_rows, self.written, self.pending = chunk_rows, 0, []
        self.carry: tuple[np.ndarray, np.ndarray] | None = None  # a row of the level before, unpaired
        # For a categorical level: the base rows and columns at its blocks' centres.
        self.rows, self.cols = block_centres(base_height, k), block_centres(base_width, k)

    def add(self, sums: np.ndarray, counts: np.ndarray, last: bool) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the level before (or the base), as sums and counts: this level's rows that they
        complete (2 x 2 blocks; a lone last row and the last column make partial ones)."""
        if self.carry is not None:
            sums, counts = np.concatenate([self.carry[0], sums], 1), np.concatenate([self.carry[1], counts], 1)
            self.carry = None
        whole = sums.shape[1] if last else sums.shape[1] // 2 * 2
        if whole < sums.shape[1]:
            self.carry = (sums[:, whole:], counts[:, whole:])
        return _block_sums(sums[:, :whole], 2), _block_sums(counts[:, :whole], 2)

    def pick(self, strip: np.ndarray, r0: int) -> None:
        """For a categorical level: the base pixels at its blocks' centres that are in ``strip``
        (base rows from ``r0``)."""
        rows = self.rows[(self.rows >= r0) & (self.rows < r0 + strip.shape[1])] - r0
        if rows.size:
            self.emit(strip[:, rows][:, :, self.cols])

    def emit(self, rows: np.ndarray) -> None:
        if rows.shape[1]:
            self.pending.append(rows)
        if sum(p.shape[1] for p in self.pending) >= self.chunk_rows:
            self.flush(whole_chunks=True)

    def flush(self, whole_chunks: bool = False) -> None:
        """Write the rows made so far; ``whole_chunks``: only whole rows of chunks, the rest kept
        (so that no chunk is written twice)."""
        if not self.pending:
            return
        rows = np.concatenate(self.pending, 1)
        n = rows.shape[1] // self.chunk_rows * self.chunk_rows if whole_chunks else rows.shape[1]
        self.pending = [rows[:, n:]] if n < rows.shape[1] else []
        if n:
            _write_rows(self.array, self.written, rows[:, :n])
            self.written += n


def _write_rows(array, row: int, pixels: np.ndarray) -> None:
    rows = slice(row, row + pixels.shape[1])
    if array.ndim == 3:
        array[:, rows, :] = pixels
    else:
        array[rows, :] = pixels[0]


def folder_size(path: str) -> int:
    """Bytes of every file under ``path`` (a store, or one array of it)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def store_facts(store: str) -> dict | None:
    """What a user wants to know of the store, for ``onegrid results``: from its consolidated
    metadata (one file, no zarr import); None if it is not finished."""
    try:
        with open(os.path.join(store, "zarr.json")) as f:
            children = json.load(f)["consolidated_metadata"]["metadata"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The datasets' arrays at the root (full resolution); each overview level is a group "overviews/<f>".
    arrays = {name: meta for name, meta in sorted(children.items()) if "/" not in name
              and meta.get("node_type") == "array" and meta.get("attributes", {}).get("grid_mapping")}
    levels = sorted(int(name.rsplit("/", 1)[1]) for name, meta in children.items() if name.count("/") == 1
                    and name.startswith(f"{ZARR_OVERVIEWS}/") and meta.get("node_type") == "group")
    return {"path": store, "bytes": folder_size(store), "overviews": levels,
            "arrays": [{"name": name, "shape": meta["shape"], "dtype": meta["data_type"], **_chunking(meta),
                        "dims": meta.get("dimension_names")} for name, meta in arrays.items()]}


def _chunking(meta: dict) -> dict:
    """An array's chunks and, if sharded, its shards (the chunk grid is then the shards')."""
    outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
    codecs = meta.get("codecs") or [{}]
    if codecs[0].get("name") == "sharding_indexed":
        return {"chunks": codecs[0]["configuration"]["chunk_shape"], "shards": outer}
    return {"chunks": outer, "shards": None}


def path_is_zarr_array(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "zarr.json"))


def zarr_quicklook(path: str, longest: int) -> tuple[np.ma.MaskedArray, float]:
    """A dataset's array (its first band) at most ``longest`` pixels on its longest side, every
    ``step``-th pixel of its coarsest overview level that is still at least ``longest`` pixels
    (so that a large array is not decoded whole), masked where nodata, and the factor from the
    full resolution."""
    zarr = _zarr()
    array = zarr.open_array(path, mode="r")
    side = max(array.shape[-2:])
    store, name = os.path.split(os.path.normpath(path))
    factor = 1
    levels = os.path.join(store, ZARR_OVERVIEWS)
    for f in sorted(int(e) for e in (os.listdir(levels) if os.path.isdir(levels) else ()) if e.isdigit()):
        if -(-side // f) >= longest and os.path.exists(os.path.join(store, level_array(name, f), "zarr.json")):
            factor = f
    if factor > 1:
        array = zarr.open_array(os.path.join(store, level_array(name, factor)), mode="r")
    height, width = array.shape[-2:]
    step = max(1, math.ceil(max(width, height) / longest))
    data = array[(0,) * (array.ndim - 2) + (slice(None, None, step), slice(None, None, step))]
    fill = array.metadata.fill_value
    mask = np.isnan(data) if data.dtype.kind == "f" else np.zeros(data.shape, bool)
    if fill is not None and not (isinstance(fill, float) and math.isnan(fill)):
        mask |= data == fill
    return np.ma.masked_array(data, mask), float(step * factor)
