"""The stack as one Zarr v3 store, ``results/stack.zarr``, written in parallel by the batch jobs.

One array per dataset, with its own data type and fill value (its nodata), dims ``(y, x)``, or
``(<dataset>_band, y, x)`` for a dataset of several bands; shared ``x`` and ``y`` coordinates (pixel
centres) and a ``spatial_ref`` variable carrying the CRS and transform as CF's grid mapping does,
so that ``xarray.open_zarr`` with rioxarray (or odc-geo) gives them; the same as GeoZarr's ``proj:``
and ``spatial:`` attributes on the root group.

Chunks are tiles: the batch job that makes a tile writes its chunk, and no other job ever writes
it, so no lock is needed and no step after the batches reads every pixel. zarr-python writes each
chunk under a temporary name and renames it. A dataset's array is (re)created by its register job,
before its batches; when what shapes its chunks changed (the grid, the data type, the tiles'
digest: the array's attribute SPEC_ATTRIBUTE says), its old chunks are removed, so a changed
dataset invalidates its own array and no other. The root's consolidated metadata (what
``open_zarr`` reads at once) is written last, by rule zarr_store, which reads no pixel.
"""

from __future__ import annotations

import base64
import contextlib
import glob
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
from workflow_lib.domain import ZARR_BAND_SUFFIX, ZARR_COORDINATES, TileIndex, chunk_path, tiles_without_chunks
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


def root_attributes(grid: TargetGrid) -> dict:
    """GeoZarr's projection and spatial attributes of the whole store (all arrays share the grid)."""
    t = grid.transform
    left, bottom, right, top = grid.bounds
    attrs = {"proj:wkt2": grid.crs.to_wkt(version=WktVersion.WKT2_2019), "spatial:dimensions": ["y", "x"],
             "spatial:transform": [t.a, t.b, t.c, t.d, t.e, t.f], "spatial:shape": [grid.height, grid.width],
             "spatial:bbox": [left, bottom, right, top], "spatial:registration": "pixel",
             "title": "onegrid stack: every dataset on one grid"}
    code = grid.crs.to_string() if grid.crs.to_epsg() else None
    if code:
        attrs["proj:code"] = code
    return attrs


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
    zarr = _zarr()
    if os.path.exists(os.path.join(store, "zarr.json")) and all(_has_chunks(store, n) for n in ZARR_COORDINATES):
        return
    root = zarr.open_group(store, mode="a", zarr_format=3, attributes=root_attributes(grid))
    write_coordinates(root, grid, _create, skip=lambda name: _has_chunks(store, name))


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


def prepare_array(store: str, grid: TargetGrid, dataset: DatasetPlan, replace: bool = True) -> bool:
    """Create the dataset's array, or keep it if it was created with the same spec. Returns True
    when it was (re)created: its old chunks, made for other settings, are gone. ``replace=False``
    (a batch job): never remove an array, only create a missing one."""
    zarr = _zarr()
    ensure_store(store, grid)
    spec = array_spec(grid, dataset)
    digest = spec_digest(spec)
    folder = os.path.join(store, dataset.name)
    try:
        with open(os.path.join(folder, "zarr.json")) as f:
            if json.load(f)["attributes"][SPEC_ATTRIBUTE] == digest:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if replace:
        for old in (folder, os.path.join(store, f"{dataset.name}{ZARR_BAND_SUFFIX}")):  # its band labels too
            if os.path.isdir(old):
                log.info("zarr array %s: made with other settings, removed with its chunks", old)
                shutil.rmtree(old)
    settings = dataset.settings
    ts = grid.tile_size
    band_dim = band_dimension(dataset)
    shape, chunks, dims = (grid.height, grid.width), (ts, ts), ("y", "x")
    if band_dim:
        n = len(dataset.band_names)
        shape, chunks, dims = (n, *shape), (n, *chunks), (band_dim, *dims)
    attrs = {SPEC_ATTRIBUTE: digest, "grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING,
             "long_name": dataset.name, "resampling_method": settings.method.value,
             "_FillValue": fill_value_attribute(settings.dst_nodata, settings.dst_dtype)}
    root = zarr.open_group(store, mode="a", zarr_format=3)
    _create(root, dataset.name, shape=shape, chunks=chunks, shards=shard_shape(grid, dataset),
            dtype=settings.dst_dtype, fill_value=settings.dst_nodata, dimension_names=dims, attributes=attrs,
            compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL))
    if band_dim:
        labels = _create(root, band_dim, shape=(n,), dtype=str, chunks=(n,), dimension_names=(band_dim,))
        labels[:] = np.array(dataset.band_names)
    return True


def open_array(store: str, dataset: DatasetPlan):
    # A tile of nodata is a chunk too (zarr-python skips writing those by default): a chunk's
    # presence is what says that its tile is done.
    array = _zarr().open_array(os.path.join(store, dataset.name), mode="r+", zarr_format=3)
    return array.with_config({"write_empty_chunks": True})


class ChunkWriter:
    """What a batch job does for the store: copy each tile it makes (and each tile it keeps whose
    chunk is missing: the store was removed, or the job was killed between the two) into its chunk."""

    def __init__(self, store: str, grid: TargetGrid, dataset: DatasetPlan, tile_folder: str):
        self.store, self.grid, self.dataset, self.tile_folder = store, grid, dataset, tile_folder
        if not os.path.exists(os.path.join(store, dataset.name, "zarr.json")):
            # Removed since its register job ran (or zarr was not among the formats then): made as
            # that job makes it, never replacing one that another batch job of it has just made.
            log.info("zarr array of %s is missing from %s: made again", dataset.name, store)
            prepare_array(store, grid, dataset, replace=False)
        self.array = open_array(store, dataset)

    def write(self, index: TileIndex) -> None:
        write_tile_chunk(self.array, self.grid, index, index.path(self.tile_folder), self.store, self.dataset)

    def fill_missing(self, tiles) -> list[TileIndex]:
        """Write the chunks of ``tiles`` (on disk already) that are missing; returns them."""
        missing = tiles_without_chunks(self.store, self.dataset.name, bool(band_dimension(self.dataset)), tiles)
        for index in missing:
            self.write(index)
        if missing:
            log.info("zarr array of %s: %d chunk(s) of tiles already on disk written", self.dataset.name,
                     len(missing))
        return missing

    def close(self, complete: bool) -> None:
        """Each chunk is complete once written: nothing is left to do."""


def write_tile_chunk(array, grid: TargetGrid, index: TileIndex, tile_file: str, store: str,
                     dataset: DatasetPlan) -> None:
    """Copy a tile's pixels (all its bands) into its chunk."""
    window = grid.tile(index).window
    rows = slice(int(window.row_off), int(window.row_off + window.height))
    cols = slice(int(window.col_off), int(window.col_off + window.width))
    target = chunk_path(store, dataset.name, index, bool(band_dimension(dataset)))
    for stale in glob.glob(glob.escape(target) + ".*.partial"):  # a chunk writer killed outright
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    with rasterio.open(tile_file) as src:
        data = src.read()
    try:
        if band_dimension(dataset):
            array[:, rows, cols] = data
        else:
            array[rows, cols] = data[0]
    except OSError as exc:
        raise OutputWriteError(target, exc) from exc


def shard_shape(grid: TargetGrid, dataset: DatasetPlan) -> tuple[int, ...] | None:
    """A shard of the dataset's array in pixels (a batch's rectangle of tiles), or None."""
    if not dataset.shard:
        return None
    shape = (dataset.shard[0] * grid.tile_size, dataset.shard[1] * grid.tile_size)
    return (len(dataset.band_names), *shape) if band_dimension(dataset) else shape


def _sharding_layout(grid: TargetGrid, dataset: DatasetPlan) -> dict:
    """The sharding codec that ShardWriter's files follow, as zarr-python 3.1 writes it by default
    for prepare_array's arguments: chunks encoded as bytes (little-endian) then ZSTD, an index of
    (offset, length) pairs at the end, itself little-endian with a CRC32C."""
    ts = grid.tile_size
    chunk = [len(dataset.band_names), ts, ts] if band_dimension(dataset) else [ts, ts]
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    one_byte = np.dtype(dataset.settings.dst_dtype).itemsize == 1  # no byte order to say
    return {"name": "sharding_indexed", "configuration": {
        "chunk_shape": chunk,
        "codecs": [{"name": "bytes"} if one_byte else little,
                   {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}}],
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": "end"}}


# An absent chunk in a shard's index (Zarr v3's sharding codec).
_NO_CHUNK = 2 ** 64 - 1


class ShardWriter:
    """What a batch job does for the store when the dataset's array is sharded (more than
    planning.batches.SHARD_MIN_TILES tiles): its batch is one shard, one file, written once. Each
    tile's chunk is encoded in the worker thread that made it and appended to the shard's
    temporary file (a lock orders the appends within the job; no other job writes this shard);
    ``close`` writes the index and renames the file, or, for a batch that did not complete,
    removes it. A shard under its final name therefore holds every tile of its batch."""

    def __init__(self, store: str, grid: TargetGrid, dataset: DatasetPlan, tile_folder: str, batch: str):
        from numcodecs import Zstd

        self.grid, self.dataset, self.tile_folder = grid, dataset, tile_folder
        if not os.path.exists(os.path.join(store, dataset.name, "zarr.json")):
            log.info("zarr array of %s is missing from %s: made again", dataset.name, store)
            prepare_array(store, grid, dataset, replace=False)
        array = open_array(store, dataset)
        codecs = json.loads(json.dumps([c.to_dict() for c in array.metadata.codecs]))  # tuples as lists
        if codecs != [_sharding_layout(grid, dataset)]:
            raise OutputWriteError(os.path.join(store, dataset.name), RuntimeError(
                f"its codecs are {codecs}, not the sharding layout this workflow writes"))
        self.fill = array.metadata.fill_value
        self.dtype = np.dtype(dataset.settings.dst_dtype).newbyteorder("<")
        self.compressor = Zstd(level=ZSTD_LEVEL)
        self.shard = shard_index(batch, dataset.shard)
        self.origin = (self.shard.row * dataset.shard[0], self.shard.col * dataset.shard[1])
        multiband = bool(band_dimension(dataset))
        self.path = chunk_path(store, dataset.name, self.shard, multiband)
        # (offset, length) per chunk of the shard, in C order: with bands, the band chunk comes first.
        self.lead = (0,) if multiband else ()
        self.index = np.full((*((1,) if multiband else ()), *dataset.shard, 2), _NO_CHUNK, dtype="<u8")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        remove_stale_temporaries(self.path)
        self.tmp = f"{temporary_prefix(self.path)}{os.getpid()}.partial"
        self.file = open(self.tmp, "wb")
        self.lock = threading.Lock()
        self.written: set[TileIndex] = set()

    def _encode(self, data: np.ndarray) -> bytes:
        ts = self.grid.tile_size
        if data.shape[1:] != (ts, ts):  # an edge tile: its chunk is whole, padded with the fill value
            full = np.full((data.shape[0], ts, ts), self.fill, dtype=data.dtype)
            full[:, :data.shape[1], :data.shape[2]] = data
            data = full
        data = data if band_dimension(self.dataset) else data[0]
        return self.compressor.encode(np.ascontiguousarray(data, dtype=self.dtype).tobytes())

    def write(self, index: TileIndex) -> None:
        """Append the chunk of a tile on disk (what the batch's worker threads call)."""
        with rasterio.open(index.path(self.tile_folder)) as src:
            self.write_array(index, src.read())

    def write_array(self, index: TileIndex, data: np.ndarray) -> None:
        """Append a tile's chunk from its pixels, (bands, rows, columns)."""
        encoded = self._encode(data)
        at = (*self.lead, index.row - self.origin[0], index.col - self.origin[1])
        with self.lock:
            try:
                offset = self.file.tell()
                self.file.write(encoded)
            except OSError as exc:
                raise OutputWriteError(self.path, exc) from exc
            self.index[at] = (offset, len(encoded))
            self.written.add(index)

    def fill_missing(self, tiles) -> list[TileIndex]:
        """Append the chunks of ``tiles`` (kept on disk, not made by this job): the shard is
        rewritten whole, so every tile of the batch goes in."""
        missing = [t for t in tiles if t not in self.written]
        for index in missing:
            self.write(index)
        return missing

    def close(self, complete: bool) -> None:
        try:
            if complete:
                raw = self.index.tobytes()
                self.file.write(raw + struct.pack("<I", _crc32c(raw)))
                self.file.close()
                os.chmod(self.tmp, shared_mode())
                os.replace(self.tmp, self.path)
                log.info("zarr shard %s: %d chunk(s)", self.path, len(self.written))
                return
        except OSError as exc:
            raise OutputWriteError(self.path, exc) from exc
        finally:
            self.file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)


def _crc32c(data: bytes) -> int:
    import google_crc32c  # zarr-python's own checksum library

    return google_crc32c.value(data)


def finish_store(store: str, grid: TargetGrid, names: list[str]) -> list[str]:
    """Remove the arrays of datasets no longer in the run, and write the root's consolidated
    metadata (every array's, read by ``xarray.open_zarr`` at once). Returns the removed names."""
    zarr = _zarr()
    # Which grid the coordinates were made for, before ensure_store (which makes missing ones for
    # this grid; Snakemake removes the root's zarr.json, this job's output, before it runs).
    try:
        with open(os.path.join(store, GRID_MAPPING, "zarr.json")) as f:
            made_for = json.load(f)["attributes"].get(GRID_ATTRIBUTE)
    except (OSError, ValueError, KeyError, TypeError):
        made_for = None
    ensure_store(store, grid)
    if made_for is not None and made_for != grid_digest(grid):
        # Made by an earlier run on another grid: the root's attributes and the coordinates are
        # replaced (no other job runs now).
        write_json_atomic(os.path.join(store, "zarr.json"),
                          {"zarr_format": 3, "node_type": "group", "attributes": root_attributes(grid)})
        write_coordinates(zarr.open_group(store, mode="r+"), grid,
                          lambda root, name, **spec: root.create_array(name, overwrite=True, **spec))
    keep = set(names) | set(ZARR_COORDINATES) | {f"{n}{ZARR_BAND_SUFFIX}" for n in names}
    removed = []
    for entry in sorted(os.listdir(store)):
        path = os.path.join(store, entry)
        if os.path.isdir(path) and entry not in keep:
            shutil.rmtree(path)
            removed.append(entry)
    with warnings.catch_warnings():
        # zarr-python warns that consolidated metadata is its own extension of Zarr v3: it is what
        # xarray.open_zarr looks for first, and other readers ignore it.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(store, zarr_format=3)
    return removed


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
    arrays = {name: meta for name, meta in sorted(children.items())
              if meta.get("node_type") == "array" and meta.get("attributes", {}).get("grid_mapping")}
    return {"path": store, "bytes": folder_size(store),
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
    ``factor``-th pixel, masked where nodata, and that factor."""
    array = _zarr().open_array(path, mode="r")
    height, width = array.shape[-2:]
    step = max(1, math.ceil(max(width, height) / longest))
    data = array[(0,) * (array.ndim - 2) + (slice(None, None, step), slice(None, None, step))]
    fill = array.metadata.fill_value
    mask = np.isnan(data) if data.dtype.kind == "f" else np.zeros(data.shape, bool)
    if fill is not None and not (isinstance(fill, float) and math.isnan(fill)):
        mask |= data == fill
    return np.ma.masked_array(data, mask), float(step)
