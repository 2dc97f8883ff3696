"""The plan of a run: the target grid and, per dataset, its tiles and the batches that are jobs.

Made from the config and raster headers only (never pixels) when the Snakefile is parsed, so that a
dry run lists every job. Parsing happens again in every cluster job, so the plan is cached on disk,
keyed by the config and each input's size and modification time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from collections.abc import Callable
from typing import Any

import numpy as np
from rasterio.windows import Window

from workflow_lib.atomic import write_json_atomic
from workflow_lib.config import nodata_override, target_crs, target_resolution
from workflow_lib.coords import trusted_transform
from workflow_lib.domain import (ALL_FORMATS, FORMAT_ORDER, Engine, Method, OutputFormat, TileIndex, count_array,
                                 level_array)
from workflow_lib.errors import GDAL_ERRORS, ConfigError, InputRasterError
from workflow_lib.planning.batches import MAX_JOBS, Batch, machine_cores, make_batches, shard_tiles, tiles_per_batch
from workflow_lib.planning.engine import choose_engine
from workflow_lib.planning.footprint import (Bounds, edge_points, footprint_bounds, footprint_window,
                                             raster_centre_lon, tile_mask, whole_image_scale)
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.settings import WarpSettings, kernel_reach, resolve_settings
from workflow_lib.planning.table import table_columns
from workflow_lib.sources.catalog import read_headers
from workflow_lib.sources.header import RasterHeader, read_header
from workflow_lib.sources.members import (MemberMosaic, arrange, check_members, member_tiles, split_runs,
                                         vrt_nodata, write_members_vrt)
from workflow_lib.sources.paths import is_glob, local_file, member_paths, stamps

# Bump when the plan's content or its derivation changes, so that old caches are not reused.
PLAN_FORMAT = 11
DEFAULT_CACHE_DIR = ".cache/plan"
# Sample points along each side of a tile when finding the members under it.
_MEMBER_SAMPLES = 5


@dataclass(frozen=True)
class Part:
    """One of the rasters of a dataset made of files on several grids (another UTM zone): its
    settings of its own, and the rectangle of tiles it reaches (a window of the grid's tiles:
    columns and rows are tile columns and rows)."""

    header: RasterHeader
    settings: WarpSettings
    tile_box: Window

    def reaches(self, tile: TileIndex) -> bool:
        box = self.tile_box
        return box.row_off <= tile.row < box.row_off + box.height and box.col_off <= tile.col < box.col_off + box.width

    def to_dict(self) -> dict:
        box = self.tile_box
        return {"header": self.header.to_dict(), "settings": self.settings.to_dict(),
                "tile_box": [box.row_off, box.row_off + box.height, box.col_off, box.col_off + box.width]}

    @classmethod
    def from_dict(cls, data: dict) -> "Part":
        r0, r1, c0, c1 = data["tile_box"]
        return cls(RasterHeader.from_dict(data["header"]), WarpSettings.from_dict(data["settings"]),
                   Window(c0, r0, c1 - c0, r1 - r0))


@dataclass(frozen=True)
class DatasetPlan:
    name: str
    header: RasterHeader
    settings: WarpSettings
    batches: tuple[Batch, ...]  # every planned tile is in exactly one
    note: str = ""  # what planning had to decide for the user (an extent clipped to an area of use)
    tile_count: int = -1  # when the batches were left out (to_dict(with_batches=False)): how many tiles
    # The part of the grid under the input's footprint, in target pixels: how much of each tile has
    # source pixels (its estimated work, tile_work_of).
    footprint: Window | None = None
    # Several parts (files on several grids), resampled one by one and combined in this order, the
    # later one's valid pixels winning (engines.compose); none for one raster (the header above).
    parts: tuple[Part, ...] = ()
    # Names of the mosaic's bands when the dataset has several (settings.bands); else its name.
    band_names: tuple[str, ...] = ()
    # Tile rows and columns of a shard of its Zarr array (one per batch), or None: unsharded
    # (planning.batches.shard_tiles). From the batches; kept for jobs, whose copy has none.
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.tile_count < 0:
            object.__setattr__(self, "tile_count", sum(len(b.tile_ids) for b in self.batches))
        if self.batches:
            object.__setattr__(self, "shard", shard_tiles(self.batches, self.tile_count))

    @property
    def tiles(self) -> tuple[TileIndex, ...]:
        return tuple(t for b in self.batches for t in b.tiles)

    @property
    def tile_ids(self) -> tuple[str, ...]:
        """The tiles' ids, without making a TileIndex of each (as the plan file holds them)."""
        return tuple(t for b in self.batches for t in b.tile_ids)

    def zarr_counts(self, grid: TargetGrid) -> bool:
        """Whether its tiles also write their counts of valid pixels at the last of those levels: the
        coarser levels of a continuous method are the means weighted by them."""
        levels = grid.tile_level_factors()
        return (bool(levels) and not self.settings.method.is_categorical
                and len(grid.overview_factors()) > len(levels))

    def level_arrays(self, grid: TargetGrid) -> tuple[str, ...]:
        """The store's arrays, beside its own, whose chunks are its tiles' parts (finest first)."""
        return (*(level_array(self.name, f) for f in grid.tile_level_factors()),
                *((count_array(self.name),) if self.zarr_counts(grid) else ()))

    @cached_property
    def batch_by_id(self) -> dict[str, Batch]:
        return {b.id: b for b in self.batches}

    def to_dict(self, with_batches: bool = True) -> dict:
        """``with_batches=False``: the dataset without its tile list (what a job's parameters carry:
        they are pickled into every job's script and kept in Snakemake's metadata)."""
        return {
            "name": self.name,
            "header": self.header.to_dict(),
            "settings": self.settings.to_dict(),
            "batches": [b.to_list() for b in self.batches] if with_batches else [],
            "tile_count": self.tile_count,
            "note": self.note,
            "footprint": _window_list(self.footprint),
            "parts": [p.to_dict() for p in self.parts],
            "band_names": list(self.band_names),
            "shard": list(self.shard) if self.shard else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "DatasetPlan":
        batches = tuple(Batch.from_list(b) for b in data["batches"])
        return cls(
            data["name"],
            RasterHeader.from_dict(data["header"]),
            WarpSettings.from_dict(data["settings"]),
            batches,
            data.get("note", ""),
            -1 if batches else data.get("tile_count", 0),
            Window(*data["footprint"]) if data.get("footprint") else None,
            tuple(Part.from_dict(p) for p in data.get("parts", [])),
            tuple(data.get("band_names", [])),
            tuple(data["shard"]) if data.get("shard") else None,
        )

    def tile_work_of(self, grid: TargetGrid) -> Callable[[TileIndex], float]:
        """Estimated work of each tile: the source pixels under its part of the footprint, plus the
        pixels it writes (an edge tile that the input barely reaches costs little)."""
        f = self.footprint or Window(0, 0, grid.width, grid.height)
        f_x0, f_y0 = int(f.col_off), int(f.row_off)
        f_x1, f_y1 = f_x0 + int(f.width), f_y0 + int(f.height)
        density = 1.0 / max(self.settings.x_scale * self.settings.y_scale, 1e-300)
        # At most the input's own pixels over its footprint (the part of the grid under it).
        density = min(density, float(self.header.width) * self.header.height / max(float(f.width) * f.height, 1.0))
        size = grid.tile_size

        def work(tile: TileIndex) -> float:
            x0, y0 = tile.col * size, tile.row * size
            x1, y1 = min(x0 + size, grid.width), min(y0 + size, grid.height)
            wx = max(0, min(x1, f_x1) - max(x0, f_x0))
            wy = max(0, min(y1, f_y1) - max(y0, f_y0))
            written = float((x1 - x0) * (y1 - y0))
            return wx * wy * density + written

        return work


@dataclass(frozen=True)
class Plan:
    grid: TargetGrid
    datasets: dict[str, DatasetPlan]
    formats: tuple[OutputFormat, ...] = ALL_FORMATS  # what the run ends with (config output.formats)
    notes: tuple[str, ...] = ()  # what a user should know of the whole run (format_limits)

    @property
    def tile_count(self) -> int:
        return sum(d.tile_count for d in self.datasets.values())

    @property
    def batch_count(self) -> int:
        return sum(len(d.batches) for d in self.datasets.values())

    def estimated_work(self, name: str) -> float:
        """Source pixels a dataset's tiles read: its tiles' area in input pixels, at most the
        input's own pixels (a global input onto a local grid reads only the part under the grid)."""
        d = self.datasets[name]
        tile_pixels = self.grid.tile_size ** 2 / max(d.settings.x_scale * d.settings.y_scale, 1e-300)
        return min(float(d.header.width) * d.header.height, d.tile_count * tile_pixels)

    def priorities(self, order: str) -> dict[str, int]:
        """Snakemake job priorities per dataset: ``size`` works on the smallest estimated work
        first (complete mosaics appear early), ``config`` in the config's order."""
        names = list(self.datasets)
        if order == "size":  # sorted() is stable: equal work keeps the config's order
            names = sorted(names, key=self.estimated_work)
        return {name: len(names) - i for i, name in enumerate(names)}

    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "grid": self.grid.to_dict(),
            "datasets": {n: d.to_dict() for n, d in self.datasets.items()},
            "formats": [f.value for f in self.formats],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(
            TargetGrid.from_dict(data["grid"]),
            {n: DatasetPlan.from_dict(d) for n, d in data["datasets"].items()},
            tuple(OutputFormat(f) for f in data["formats"]),
            tuple(data.get("notes", [])),
        )


def build_plan(config: dict[str, Any], cache_dir: str = DEFAULT_CACHE_DIR) -> Plan:
    """Read every input's header and work out the grid and the tiles. The plan itself is not
    cached here (load_plan does); the headers of datasets of many files are, under ``cache_dir``,
    beside the VRT that makes them one raster."""
    crs = target_crs(config)
    datasets = config["datasets"]
    target = config["target"]
    sources = {name: dataset_sources(name, ds, cache_dir) for name, ds in datasets.items()}
    # Each part of a dataset (one file, or one run of its files on one pixel grid): its footprint.
    footprints = {name: [_footprint(name, datasets[name], h, crs) for h, _ in parts]
                  for name, parts in sources.items()}
    extent = target.get("extent", "union")
    notes = {}
    if extent == "union":
        for name, bounds in ((n, b) for n, parts in footprints.items() for b in parts):
            if bounds.untrusted:
                raise ConfigError(
                    f"datasets.{name}: part of {datasets[name]['path']} lies where {target['crs']} is not defined "
                    "(outside its projection's domain), and that CRS declares no area of use to clip it to: set "
                    "target.extent to the area you want ({left, bottom, right, top} in target CRS units)")
            if bounds.box is None:
                raise ConfigError(
                    f"datasets.{name}: {datasets[name]['path']} does not overlap the area of use of "
                    f"{target['crs']} ({bounds.clipped_to}); remove the dataset or choose another target CRS")
            if bounds.clipped_to is not None:
                notes[name] = (f"{datasets[name]['path']} reaches beyond where {target['crs']} is defined: its part of "
                               f"the union extent is clipped to the CRS's area of use ({bounds.clipped_to}); set "
                               "target.extent to choose another area")
        boxes = [b.box for parts in footprints.values() for b in parts]
        bounds = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                  max(b[3] for b in boxes))
    else:
        bounds = (extent["left"], extent["bottom"], extent["right"], extent["top"])
        _check_extent_units(crs, bounds)
    resolution = target_resolution(config)
    _check_resolution(config, crs, bounds, resolution)
    grid = TargetGrid.from_bounds(crs, bounds, resolution, tuple(target.get("origin", (0.0, 0.0))),
                                  config.get("tile_size", 4096))
    _check_grid_size(config, grid)
    error_threshold = config.get("warp", {}).get("error_threshold", 0.125)
    plans, masks = {}, {}
    for name, ds in datasets.items():
        bands = dataset_bands(name, ds, sources[name][0][0])
        planned = [_plan_part(name, ds, header, mosaic, footprint, grid, crs, error_threshold, bands)
                   for (header, mosaic), footprint in zip(sources[name], footprints[name])]
        mask = np.logical_or.reduce([m for _, _, m, _ in planned])
        tiles = [TileIndex(int(r), int(c)) for r, c in np.argwhere(mask)]
        if not tiles:
            raise ConfigError(
                f"datasets.{name}: {ds['path']} does not overlap the target extent {grid.bounds} "
                f"(in {target['crs']}); remove the dataset or widen target.extent" + _units_hint(crs, bounds))
        masks[name] = tiles
        header, settings, _, window = planned[0]
        parts = ()
        if len(planned) > 1:  # runs in other CRSs or on other grids: each resampled, then combined
            parts = tuple(Part(h, st, _tile_box(m)) for h, st, m, _ in planned if m.any())
        names = ()
        if settings.bands:
            names = tuple(header.descriptions[b - 1] if len(header.descriptions) >= b and header.descriptions[b - 1]
                          else f"{name}_b{b}" for b in settings.bands)
        elif settings.method is Method.FRACTIONS or settings.coverage:
            names = dataset_classes(name, ds)[1] if settings.method is Method.FRACTIONS else (name,)
            names += (f"{name}_coverage",) if settings.coverage else ()
        plans[name] = (header, settings, window, parts, names)
    batched = _batched(config, grid, plans, masks, notes)
    formats = output_formats(config)
    if OutputFormat.PARQUET in formats:
        table_columns(batched.values())  # two datasets' bands named alike: said before any job
    return Plan(grid, batched, formats, format_limits(grid, batched, formats))


# What the formats hold (GDAL's and TIFF's fields): pixels per side (GDAL's raster size is an int),
# bands per file (TIFF's SamplesPerPixel is 16 bits), and the largest file ext4 holds (with 4 KiB
# blocks; XFS and most cluster file systems hold more).
GDAL_MAX_SIDE = 2 ** 31 - 1
TIFF_MAX_BANDS = 65535
LARGE_FILE_BYTES = 16 * 2 ** 40


def format_limits(grid: TargetGrid, datasets: dict[str, DatasetPlan],
                  formats: tuple[OutputFormat, ...]) -> tuple[str, ...]:
    """A stack that the chosen formats cannot hold: a ConfigError before any job (a grid wider than
    GDAL holds is refused earlier, by _check_grid_size). Returns notes on what they can hold but
    hardly (a GeoTIFF stack larger than many file systems allow)."""
    if OutputFormat.COG not in formats:
        return ()
    bands = sum(len(d.band_names) or 1 for d in datasets.values())
    if bands > TIFF_MAX_BANDS:
        raise ConfigError(f"output.formats: the GeoTIFF stack would have {bands:,} bands (one per dataset band), "
                          f"more than the {TIFF_MAX_BANDS:,} a TIFF file holds; set output.formats: [zarr] (one "
                          "array per dataset), or fewer classes or bands")
    # The stack has one data type for all its bands, the widest of the datasets' (mosaics.stack_dtype_and_nodata).
    stack = grid.width * grid.height * bands * max(np.dtype(d.settings.dst_dtype).itemsize for d in datasets.values())
    if stack > LARGE_FILE_BYTES:
        return (f"the GeoTIFF stack (output.formats: cog) would hold {stack / 2 ** 40:,.0f} TiB before compression "
                f"({grid.width:,} x {grid.height:,} pixels, {bands} bands), one file written by one job: ext4 holds "
                "at most 16 TiB per file. Consider output.formats: [zarr], whose chunks the batch jobs write",)
    return ()


def dataset_classes(name: str, ds: dict) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """The classes of a dataset of method fractions, in the config's order, and their band names:
    ``classes: [10, 20]`` (named <dataset>_10, <dataset>_20) or ``{10: forest, 20: water}``."""
    given = ds.get("classes")
    if Method(ds["method"]) is not Method.FRACTIONS:
        if given:
            raise ConfigError(f"datasets.{name}.classes: only method fractions has classes (method is "
                              f"{ds['method']})")
        return (), ()
    if not given:
        raise ConfigError(f"datasets.{name}.classes: method fractions needs the classes to measure, as a list "
                          "([10, 20, 30]) or with names ({10: forest, 20: water})")
    pairs = list(given.items()) if isinstance(given, dict) else [(v, None) for v in given]
    values = []
    for key, _ in pairs:
        try:
            values.append(float(key))
        except (TypeError, ValueError):
            raise ConfigError(f"datasets.{name}.classes: {key!r} is not a number") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"datasets.{name}.classes: a class is given twice ({given})")
    names = tuple(str(label) if label else f"{name}_{_class_label(v)}" for v, (_, label) in zip(values, pairs))
    return tuple(values), names


def _class_label(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def output_dtype(name: str, ds: dict, method: Method, src_dtype: str, coverage: bool) -> str:
    """The mosaic's data type: the config's dtype, else the input's; class fractions are float32
    shares unless dtype says float64; with a coverage band, an integer type becomes real (float32
    up to 16-bit integers, else float64) so that shares fit beside values."""
    dtype = ds.get("dtype")
    if method is Method.FRACTIONS or coverage:
        if dtype and np.dtype(dtype).kind != "f":
            what = "class fractions" if method is Method.FRACTIONS else "a coverage band"
            raise ConfigError(f"datasets.{name}.dtype: {what} are shares from 0 to 1: give float32 or float64, "
                              f"not {dtype}")
        if method is Method.FRACTIONS:
            return dtype or "float32"
        return dtype or str(np.result_type(src_dtype, np.float32))
    return dtype


def dataset_bands(name: str, ds: dict, header: RasterHeader) -> tuple[int, ...]:
    """The bands a dataset resamples: ``bands`` (a list, or "all"), else ``band``."""
    bands = ds.get("bands")
    if bands is None:
        return (ds.get("band", 1),)
    if bands == "all":
        return tuple(range(1, header.count + 1))
    for b in bands:
        if b > header.count:
            raise InputRasterError(name, header.path, f"band {b} requested but the file has {header.count} band(s)")
    return tuple(bands)


def _plan_part(name: str, ds: dict, header: RasterHeader, mosaic: MemberMosaic | None, footprint: Bounds,
               grid: TargetGrid, crs, error_threshold: float, bands: tuple[int, ...] = (1,)):
    """Settings and tiles of one part of a dataset: (header, settings, tile mask, footprint window)."""
    same_crs = header.crs == crs
    method = Method(ds["method"])
    classes, _ = dataset_classes(name, ds)
    coverage, min_coverage = bool(ds.get("coverage")), float(ds.get("min_coverage") or 0.0)
    if len(bands) > 1 and (method is Method.FRACTIONS or coverage):
        raise ConfigError(f"datasets.{name}: class fractions and coverage are made from one band; give band, "
                          "not bands")
    try:
        engine = choose_engine(ds.get("engine", "auto"), method, same_crs, header.transform, grid.transform,
                               coverage=coverage or min_coverage > 0)
    except ValueError as exc:
        raise ConfigError(f"datasets.{name}.engine: {exc} ({ds['path']})") from None
    window = footprint_window(header, grid, footprint)
    settings = resolve_settings(
        name,
        header,
        method=method,
        band=bands[0],
        nodata_override=nodata_override(ds),
        dtype=output_dtype(name, ds, method, header.dtype, coverage),
        scale=_planning_call(name, ds, lambda: whole_image_scale(header, grid, window, method)),
        error_threshold=error_threshold,
        same_crs=same_crs,
        engine=engine,
    )
    if len(bands) > 1:
        settings = dataclasses.replace(settings, bands=bands)
    if engine.engine is Engine.CONSERVATIVE:
        settings = dataclasses.replace(settings, classes=classes, coverage=coverage, min_coverage=min_coverage,
                                       edge_points=_planning_call(name, ds, lambda: edge_points(header, grid)))
    mask = _planning_call(name, ds, lambda: tile_mask(header, grid, margin_px=kernel_reach(settings)))
    if mosaic is not None:  # many files: only the tiles that one of them reaches
        mask &= _planning_call(name, ds, lambda: _member_tiles(mosaic, header, grid, settings))
    return header, settings, mask, window


def _tile_box(mask: np.ndarray) -> Window:
    """The rectangle of tiles that holds the True ones of ``mask`` (tile rows x tile columns)."""
    rows, cols = np.nonzero(mask)
    return Window(int(cols.min()), int(rows.min()), int(cols.max()) + 1 - int(cols.min()),
                  int(rows.max()) + 1 - int(rows.min()))


def _window_list(window: Window | None) -> list[int] | None:
    """A window as the plan file keeps it: [col_off, row_off, width, height]."""
    if window is None:
        return None
    return [int(window.col_off), int(window.row_off), int(window.width), int(window.height)]


def output_formats(config: dict[str, Any]) -> tuple[OutputFormat, ...]:
    """The config's output.formats, and the table if output.table asks for it, in a fixed order
    (whatever order the config gives)."""
    output = config.get("output", {})
    chosen = set(output.get("formats", [f.value for f in ALL_FORMATS]))
    if output.get("table", "none") != "none":
        chosen.add(output["table"])
    return tuple(f for f in FORMAT_ORDER if f.value in chosen)


def _batched(config: dict, grid: TargetGrid, plans: dict, masks: dict, notes: dict) -> dict[str, DatasetPlan]:
    """Each dataset's tiles cut into batches: ``tiles_per_job`` from the config, else chosen from
    each tile's estimated work (planning.batches)."""
    in_run = sum(len(t) for t in masks.values())
    fixed = config.get("tiles_per_job", "auto")
    # Jobs this machine runs at once: batches are sized to keep them all busy (planning.batches).
    slots = max(1, machine_cores() // config.get("threads_per_job", 2))
    out = {}
    for name, (header, settings, window, parts, names) in plans.items():
        tiles = masks[name]
        if fixed == "auto":
            per_batch = tiles_per_batch(tile_work(grid, header, settings, len(tiles)), len(tiles), in_run, slots)
            # This dataset's share of the run's jobs, so that sparse rectangles do not add up to more.
            limit = max(1, math.ceil(MAX_JOBS * len(tiles) / in_run))
        else:
            per_batch, limit = int(fixed), None
        batches = make_batches(tiles, grid.tile_rows, grid.tile_cols, per_batch, limit)
        out[name] = DatasetPlan(name, header, settings, tuple(batches), notes.get(name, ""), footprint=window,
                                parts=parts, band_names=names)
    return out


def tile_work(grid: TargetGrid, header: RasterHeader, settings: WarpSettings, tiles: int) -> float:
    """Estimated work of one tile: the input pixels it reads (at most its share of the whole input:
    a global input onto a local grid reads only the part under the grid) plus those it writes."""
    written = float(grid.tile_size) ** 2
    read = written / max(settings.x_scale * settings.y_scale, 1e-300)
    return min(read, float(header.width) * header.height / max(tiles, 1)) + written


def dataset_sources(name: str, ds: dict, cache_dir: str) -> list[tuple[RasterHeader, MemberMosaic | None]]:
    """The rasters a dataset reads, in the order they are combined: its one file, or for many
    files one raster per run of them on one pixel grid (sources.members): the file itself, or the
    VRT of the run's files (with where each lies on it)."""
    band = ds.get("band", 1)
    paths = member_paths(name, ds["path"])
    if len(paths) == 1 and not isinstance(ds["path"], list) and not is_glob(ds["path"]):
        return [(read_header(name, ds["path"], band), None)]
    root = os.path.dirname(os.path.abspath(cache_dir))  # .cache/plan -> .cache
    headers = read_headers(name, paths, band, os.path.join(root, "headers"))
    check_members(name, headers)
    if ds.get("overlap", "last") == "first":
        headers = headers[::-1]  # painted last, the first file wins
    nodata = vrt_nodata(headers[0], nodata_override(ds))
    out = []
    for run in split_runs(headers):
        if len(run) == 1 and len(headers) > 1:
            out.append((read_header(name, run[0].path, band), None))  # a run of one: the file itself
            continue
        mosaic = arrange(run)
        vrt = write_members_vrt(name, run, mosaic, nodata, os.path.join(root, "sources"))
        out.append((read_header(name, vrt, band), mosaic))
    return out


def _member_tiles(mosaic: MemberMosaic, header: RasterHeader, grid: TargetGrid, settings: WarpSettings) -> np.ndarray:
    n = _MEMBER_SAMPLES
    ts = grid.tile_size
    steps = np.linspace(0.0, 1.0, n)
    cols = np.minimum((np.arange(grid.tile_cols)[:, None] + steps[None, :]) * ts, grid.width)  # (tile_cols, n)
    rows = np.minimum((np.arange(grid.tile_rows)[:, None] + steps[None, :]) * ts, grid.height)
    cc = np.broadcast_to(cols[None, :, None, :], (grid.tile_rows, grid.tile_cols, n, n))
    rr = np.broadcast_to(rows[:, None, :, None], (grid.tile_rows, grid.tile_cols, n, n))
    c, r, ok = trusted_transform(grid.crs, grid.transform, header.crs, header.transform, cc.ravel(), rr.ravel(),
                                 raster_centre_lon(header))
    shape = (grid.tile_rows, grid.tile_cols, n * n)
    # Between sample points a curved mapping may bulge out by a fraction of a tile: a margin of a
    # quarter of the tile's source size besides the kernel's reach covers it.
    margin = kernel_reach(settings) + 2 + 0.25 * ts * max(settings.x_scale, settings.y_scale)
    return member_tiles(mosaic, c.reshape(shape), r.reshape(shape), ok.reshape(shape), margin)


def _footprint(name: str, ds: dict, header: RasterHeader, crs) -> Bounds:
    return _planning_call(name, ds, lambda: footprint_bounds(header, crs))


def _planning_call(name: str, ds: dict, work):
    """Run a planning step; a GDAL or PROJ error names the dataset instead of ending in a traceback."""
    try:
        return work()
    except GDAL_ERRORS as exc:
        raise ConfigError(f"datasets.{name}: cannot plan {ds['path']} onto the target grid: {exc}") from None


def _check_resolution(config: dict, crs, bounds, resolution) -> None:
    """Pixels many times larger than the whole extent mean a resolution in the wrong units (metres
    given to a CRS in degrees); a raster smaller than one pixel is fine."""
    left, bottom, right, top = bounds
    res_x, res_y = resolution
    if res_x > 10 * (right - left) and res_y > 10 * (top - bottom):
        units = crs.units_factor[0] if crs.units_factor else "units"
        raise ConfigError(
            f"target.resolution: {res_x:g} x {res_y:g} {units}s makes one pixel larger than the whole extent "
            f"({right - left:.6g} x {top - bottom:.6g} {units}s; {config['target']['crs']} is in {units}s): "
            f"give the resolution in {units}s, or choose a target CRS in the units you meant")


# Planning holds a few numbers per tile of the grid (footprints, masks): 20 million tiles is a
# global 30 m grid in tiles of 256 px (650,000 x 1,300,000 px makes 12.9 million), and a few GB.
MAX_GRID_TILES = 20_000_000


def _check_grid_size(config: dict, grid: TargetGrid) -> None:
    """A grid of more tiles than planning can hold, or wider than GDAL holds: said with its size
    before any array is made."""
    if max(grid.width, grid.height) > GDAL_MAX_SIDE:
        raise ConfigError(f"target: the grid is {grid.width:,} x {grid.height:,} pixels (width x height); tiles, "
                          f"mosaics and GDAL hold at most {GDAL_MAX_SIDE:,} pixels per side: choose a coarser "
                          "target.resolution or a smaller target.extent")
    tiles = grid.tile_rows * grid.tile_cols
    if tiles <= MAX_GRID_TILES:
        return
    res = config["target"]["resolution"]
    raise ConfigError(
        f"target.resolution: {res} in {config['target']['crs']} makes a grid of {grid.width:,} x {grid.height:,} "
        f"pixels (width x height), {grid.tile_cols:,} x {grid.tile_rows:,} tiles of {grid.tile_size} px: more "
        f"than the {MAX_GRID_TILES:,} tiles the workflow plans; check the resolution's units, set target.extent "
        "to a smaller area, or raise tile_size")


def _check_extent_units(crs, bounds) -> None:
    """An extent in metres given to a CRS in degrees is said at once: planned as degrees, it makes
    a grid of millions of tiles whose footprints alone took minutes to compute before any error."""
    left, bottom, right, top = bounds
    if crs.is_geographic and (max(abs(bottom), abs(top)) > 90 or max(abs(left), abs(right)) > 720):
        raise ConfigError(
            f"target.extent: {left:g}, {bottom:g}, {right:g}, {top:g} has latitudes beyond 90 or longitudes beyond "
            f"720 degrees{_units_hint(crs, bounds)}: give the extent in degrees, or choose a target CRS in metres")


def _units_hint(crs, bounds) -> str:
    if crs.is_geographic and max(abs(v) for v in bounds) > 360:
        return (f"; the extent's numbers look like metres, but {crs.to_string()} is in degrees")
    return ""


def plan_cache_key(config: dict[str, Any]) -> str:
    """Changes whenever the config or any input file (size, modification time) changes."""
    files = {}
    for name, ds in config["datasets"].items():
        paths = member_paths(name, ds["path"])
        files[name] = [[p, *s] for p, s in zip(paths, stamps(paths))]
    text = json.dumps({"format": PLAN_FORMAT, "config": config, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def plan_cache_path(config: dict[str, Any], cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    return os.path.join(cache_dir, f"{plan_cache_key(config)}.json")


def load_plan(config: dict[str, Any], cache_dir: str = DEFAULT_CACHE_DIR, path: str | None = None) -> Plan:
    """The plan for this config, from the cache when inputs and config are unchanged (``path``:
    the cache file, when the caller has already worked it out)."""
    path = path or plan_cache_path(config, cache_dir)
    try:
        with open(path) as f:
            plan = Plan.from_dict(json.load(f))
        # The VRT of a dataset of many files lives in the cache too: if it was removed, plan again.
        if all(local_file(d.header.path) is None or os.path.exists(local_file(d.header.path))
               for d in plan.datasets.values()):
            return plan
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or one from another version of this library: rebuild it below
    plan = build_plan(config, cache_dir)
    write_json_atomic(path, plan.to_dict())
    return plan
