"""The workflow's words as values: resampling methods, engines, and a tile's place on the grid.

A leaf module (it imports nothing of the library), so that every layer may use it: what a method
is, what an engine is called and how a tile is named and filed are each said here once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum


class Method(StrEnum):
    """A resampling method, as GDAL names it (and as the config's ``method`` says it)."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    CUBIC = "cubic"
    AVERAGE = "average"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    MODE = "mode"
    MED = "med"
    FRACTIONS = "fractions"  # per class, the share of each target pixel's area it covers

    @property
    def is_area(self) -> bool:
        """GDAL's area methods: each output pixel is a reduction of the input pixels under it
        (GWKAverageOrMode), rather than a pick or an interpolation at its centre."""
        return self in _AREA

    @property
    def is_conservative(self) -> bool:
        """Weighted by the area of each input pixel's footprint in each output pixel, between any
        two CRSs: the conservative engine's methods (engines.conservative)."""
        return self in _CONSERVATIVE

    @property
    def is_categorical(self) -> bool:
        """Outputs are input values (classes, picks), never blends: overviews and quicklooks of
        them pick a pixel, they do not average."""
        return self in _CATEGORICAL

    @property
    def is_interpolating(self) -> bool:
        """A kernel interpolates between input pixels around the output pixel's centre."""
        return self in _INTERPOLATING

    @property
    def is_weighted(self) -> bool:
        """Input pixels count by the share of them that the output pixel covers (the area-weighted
        sum, and the mean of it)."""
        return self in (Method.AVERAGE, Method.SUM)

    @property
    def is_computed(self) -> bool:
        """The result is a real number computed from the inputs (an integer output rounds it)."""
        return self.is_interpolating or self.is_weighted

    @property
    def kernel_radius(self) -> int:
        """Input pixels that GDAL's kernel reaches beyond the centre's at scale 1
        (GWKGetFilterRadius); the area methods take the pixels under the output pixel only."""
        return _RADIUS.get(self, 0)

    @property
    def is_block_reduction(self) -> bool:
        """The NumPy block and window engines compute it (rectangles of input pixels in one CRS)."""
        return self is Method.NEAREST or self.is_area

    @property
    def is_compiled(self) -> bool:
        """The compiled kernels (engines.kernels) reduce blocks with it (nearest is a strided copy,
        which NumPy does as fast)."""
        return self.is_area


_AREA = frozenset({Method.AVERAGE, Method.SUM, Method.MIN, Method.MAX, Method.MODE, Method.MED})
_CATEGORICAL = frozenset({Method.NEAREST, Method.MODE, Method.MIN, Method.MAX, Method.MED})
_INTERPOLATING = frozenset({Method.BILINEAR, Method.CUBIC})
_CONSERVATIVE = frozenset({Method.AVERAGE, Method.SUM, Method.MODE, Method.FRACTIONS})
_RADIUS = {Method.BILINEAR: 1, Method.CUBIC: 2}


class Engine(StrEnum):
    """What resamples a dataset's tiles; the value is what plans and tile digests record."""

    BLOCKS = "numpy"  # aligned blocks of whole input pixels, one CRS (engines.blocks)
    WINDOWS = "windows"  # unaligned rectangles of input pixels, one CRS (engines.windows)
    WARP = "gdal"  # GDAL's warper, any case (engines.warp)
    CONSERVATIVE = "conservative"  # footprints clipped on the target grid, any CRSs (engines.conservative)

    @property
    def label(self) -> str:
        """As people see it: in a dry run's messages, the plan, the status database."""
        return _LABELS[self]


_LABELS = {Engine.BLOCKS: "numpy-blocks", Engine.WINDOWS: "numpy-windows", Engine.WARP: "gdal-warp",
           Engine.CONSERVATIVE: "conservative"}

class OutputFormat(StrEnum):
    """What a run ends with (config ``output.formats``)."""

    ZARR = "zarr"  # results/stack.zarr: one array per dataset, chunks written by the batch jobs
    COG = "cog"  # one GeoTIFF mosaic per dataset (a COG unless output.cog is false) and the GeoTIFF stack
    PARQUET = "parquet"  # results/table/: one row per valid cell, one column per band (config output.table)


# What a run ends with unless the config says otherwise (the table is asked for by output.table).
ALL_FORMATS = (OutputFormat.ZARR, OutputFormat.COG)
FORMAT_ORDER = (OutputFormat.ZARR, OutputFormat.COG, OutputFormat.PARQUET)

RESULTS_DIR = "results"
TILE_SUFFIX = ".tif"


@dataclass(frozen=True, order=True)
class TileIndex:
    """A tile's row and column in the target grid's tiles: its id (r0003_c0012) and its file."""

    row: int
    col: int

    @property
    def id(self) -> str:
        return f"r{self.row:04d}_c{self.col:04d}"

    @classmethod
    def parse(cls, text: str) -> TileIndex:
        """The tile an id names. Raises ValueError for anything else."""
        row, sep, col = text.partition("_c")
        if not (sep and row[:1] == "r" and row[1:].isdigit() and col.isdigit()):
            raise ValueError(f"not a tile id: {text!r} (expected r<row>_c<col>, as in r0003_c0012)")
        return cls(int(row[1:]), int(col))

    @property
    def file_name(self) -> str:
        return tile_file_name(self.id)

    def path(self, folder: str) -> str:
        """The tile's file in ``folder`` (a dataset's tile_dir)."""
        return os.path.join(folder, self.file_name)

    def __str__(self) -> str:
        return self.id


def tile_file_name(tile_id: str) -> str:
    """The file of the tile with this id (for code that holds ids by the thousand, as the plan
    and directory listings do, without making a TileIndex of each)."""
    return tile_id + TILE_SUFFIX


def tile_dir(dataset: str, results_dir: str = RESULTS_DIR) -> str:
    """Where a dataset's tiles are: one file per tile, the run's checkpoints."""
    return os.path.join(results_dir, "tiles", dataset)


def dataset_record_path(dataset: str, results_dir: str = RESULTS_DIR) -> str:
    """What the register job found of a dataset (its header and plan, JSON)."""
    return os.path.join(results_dir, "datasets", f"{dataset}.json")


def manifest_dir(dataset: str, results_dir: str = RESULTS_DIR) -> str:
    """Where a dataset's batches leave their manifests, one per batch, written once all its tiles are on disk."""
    return os.path.join(results_dir, "batches", dataset)


def manifest_path(dataset: str, batch: str, results_dir: str = RESULTS_DIR) -> str:
    return os.path.join(manifest_dir(dataset, results_dir), f"{batch}.json")


def mosaic_path(dataset: str, results_dir: str = RESULTS_DIR) -> str:
    """A dataset's mosaic: its tiles as one (cloud-optimised) GeoTIFF."""
    return os.path.join(results_dir, "mosaics", f"{dataset}.tif")


def statistics_path(dataset: str, results_dir: str = RESULTS_DIR) -> str:
    """A dataset's statistics, gathered from its tiles' own figures by its mosaic job."""
    return os.path.join(results_dir, "statistics", f"{dataset}.json")


def virtual_mosaic_path(dataset: str, results_dir: str = RESULTS_DIR) -> str:
    """A dataset's mosaic as a VRT over its tiles, when no GeoTIFF mosaic is made (formats [zarr])."""
    return os.path.join(results_dir, "mosaics", f"{dataset}.vrt")


def stack_path(results_dir: str = RESULTS_DIR) -> str:
    """Every dataset's mosaic as one band of one file."""
    return os.path.join(results_dir, "stack.tif")


# The Zarr store's own arrays beside the datasets' (mosaics.zarr_store), whose names no dataset may
# take: the coordinates, the grid mapping, and each dataset of several bands' band labels.
ZARR_COORDINATES = ("x", "y", "spatial_ref")
ZARR_BAND_SUFFIX = "_band"
# The group of the store's overview levels, one group per factor: "overviews/4" (mosaics.zarr_store).
ZARR_OVERVIEWS = "overviews"


def level_array(dataset: str, factor: int) -> str:
    """The path, in the Zarr store, of a dataset's array at an overview level."""
    return f"{ZARR_OVERVIEWS}/{factor}/{dataset}"


def count_array(dataset: str) -> str:
    """The path, in the Zarr store, of the count of a dataset's valid full-resolution pixels in each
    pixel of the last overview level made from the tiles (its attribute "onegrid:factor" says which)."""
    return f"{ZARR_OVERVIEWS}/counts/{dataset}"


def zarr_store_path(results_dir: str = RESULTS_DIR) -> str:
    """The Zarr v3 store of every dataset on the grid, one array each (mosaics.zarr_store)."""
    return os.path.join(results_dir, "stack.zarr")


def zarr_root_path(results_dir: str = RESULTS_DIR) -> str:
    """The store's root metadata, with every array's consolidated: written last (rule zarr_store)."""
    return os.path.join(zarr_store_path(results_dir), "zarr.json")


def chunk_path(store: str, dataset: str, index: TileIndex, multiband: bool) -> str:
    """The file of a tile's chunk in the dataset's array: chunks are tiles, under Zarr v3's default
    chunk key encoding ("c/<row>/<col>", with a leading band chunk 0 for a dataset of several bands,
    whose chunks hold every band)."""
    parts = ("c", "0") if multiband else ("c",)
    return os.path.join(store, dataset, *parts, str(index.row), str(index.col))


# The temporary name of a chunk being written (mosaics.zarr_store.ChunkWriter): <chunk>.partial.
CHUNK_TEMPORARY_SUFFIX = ".partial"


def tiles_without_chunks(store: str, dataset: str, multiband: bool, tiles, others=()) -> list[TileIndex]:
    """Which of ``tiles`` have no chunk in the dataset's array, or in one of the ``others`` arrays
    (paths in the store whose chunks are tiles' parts too: its overview levels), or a chunk's
    temporary file left by a killed writer; one directory listing per row of tiles and array:
    cheap for a million."""
    arrays = [dataset, *others]
    rows: dict[tuple[str, int], set[str]] = {}
    missing = []
    for index in tiles:
        for name in arrays:
            if (name, index.row) not in rows:
                folder = os.path.dirname(chunk_path(store, name, index, multiband))
                rows[name, index.row] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            listed = rows[name, index.row]
            # A chunk's temporary file (ChunkWriter): its writer was killed; written again, it goes.
            if str(index.col) not in listed or f"{index.col}{CHUNK_TEMPORARY_SUFFIX}" in listed:
                missing.append(index)
                break
    return missing


# The per-cell table's own columns, before one per dataset band (mosaics.table): the cell's row and
# column on the grid and its centre in the grid's CRS. No dataset may take these names.
TABLE_COLUMNS = ("row", "col", "x", "y")


def table_dir(results_dir: str = RESULTS_DIR) -> str:
    """The per-cell table: a folder of Parquet files that pandas, pyarrow and DuckDB read as one."""
    return os.path.join(results_dir, "table")


def table_part_path(area: str, results_dir: str = RESULTS_DIR) -> str:
    """One area's rows (planning.areas), written by that area's job."""
    return os.path.join(table_dir(results_dir), f"{area}.parquet")


def table_metadata_path(results_dir: str = RESULTS_DIR) -> str:
    """The table's schema (with the grid's CRS) alone, written last, once every part is there:
    Parquet readers skip files whose names start with "_"."""
    return os.path.join(table_dir(results_dir), "_common_metadata")


def stac_collection_path(results_dir: str = RESULTS_DIR) -> str:
    """The STAC catalog's collection (mosaics.stac), its items beside it, one folder each."""
    return os.path.join(results_dir, "stac", "collection.json")


def quicklook_path(dataset: str, results_dir: str = RESULTS_DIR) -> str:
    return os.path.join(results_dir, "report", "quicklooks", f"{dataset}.png")


# The report's pages of the whole run (rules/report.smk), besides one quicklook per dataset.
REPORT_PAGES = ("statistics.html", "tiles.png", "tile_figures.png", "config.html")


def report_page(name: str, results_dir: str = RESULTS_DIR) -> str:
    return os.path.join(results_dir, "report", name)


def products(datasets: list[str], formats: tuple[OutputFormat, ...] = ALL_FORMATS,
             results_dir: str = RESULTS_DIR) -> list[str]:
    """Every file a complete run ends with, besides the tiles and the batches' manifests: what
    `rule all` asks for, and what `status` checks before it says a run is complete."""
    each = [dataset_record_path, statistics_path, quicklook_path]
    whole = [report_page(p, results_dir) for p in REPORT_PAGES] + [stac_collection_path(results_dir)]
    if OutputFormat.COG in formats:
        each.append(mosaic_path)
        whole.append(stack_path(results_dir))
    else:
        each.append(virtual_mosaic_path)
    if OutputFormat.ZARR in formats:
        whole.append(zarr_root_path(results_dir))
    if OutputFormat.PARQUET in formats:
        whole.append(table_metadata_path(results_dir))
    return [f(name, results_dir) for f in each for name in datasets] + whole
