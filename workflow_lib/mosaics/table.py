"""The per-cell table, ``results/table/`` (config ``output.table: parquet``): one row per cell valid in
at least one dataset, its ``row``, ``col`` and centre ``x``, ``y``, and one column per dataset band.

One Parquet file per area of the grid (planning.table), written by that area's job from the tiles
of every dataset under it, so no step reads the whole grid: pandas, pyarrow, R's arrow and DuckDB
read the folder as one table. Nodata is null (NaN too: a float band's missing value is one thing).
The grid's CRS (WKT2 and code) and transform are in every file's metadata, and in
``_common_metadata``, written last with the schema alone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from rasterio.enums import WktVersion
from rasterio.windows import Window

from workflow_lib.atomic import TMP_PREFIX, atomic_path
from workflow_lib.domain import TileIndex, table_part_path
from workflow_lib.errors import OutputWriteError, TileReadError
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.plan import DatasetPlan
from workflow_lib.planning.table import Area, table_columns

log = logging.getLogger(__name__)

METADATA_KEY = b"onegrid"
# Rows per row group: about a million, as Parquet readers like them; a tile of 4,096 px (16.7 M
# cells) is read and written in strips of that many cells, so a job holds one strip of rows of
# each dataset at a time.
ROW_GROUP_CELLS = 2 ** 20
ZSTD_LEVEL = 1


def table_schema(grid: TargetGrid, datasets: list[DatasetPlan]) -> pa.Schema:
    """The table's columns (the same in every file) and, in its metadata, the grid and what each
    column holds."""
    by_name = {d.name: d for d in datasets}
    fields = [pa.field("row", pa.int32(), nullable=False), pa.field("col", pa.int32(), nullable=False),
              pa.field("x", pa.float64(), nullable=False), pa.field("y", pa.float64(), nullable=False)]
    described = {}
    for column, name, band in table_columns(datasets):
        settings = by_name[name].settings
        fields.append(pa.field(column, pa.from_numpy_dtype(np.dtype(settings.dst_dtype))))
        described[column] = {"dataset": name, "band": band, "method": settings.method.value}
    t = grid.transform
    meta = {"crs": grid.crs.to_string() if grid.crs.to_epsg() else None,
            "crs_wkt": grid.crs.to_wkt(version=WktVersion.WKT2_2019),
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f], "width": grid.width, "height": grid.height,
            "x_y": "the cell's centre, in the grid's CRS", "row_col": "the cell's row and column on the grid",
            "columns": described}
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta).encode()})


def _valid(data: np.ndarray, nodata: float) -> np.ndarray:
    if data.dtype.kind == "f":
        ok = ~np.isnan(data)
        return ok if math.isnan(nodata) else ok & (data != nodata)
    return data != nodata


def _tile_rows(grid: TargetGrid, index: TileIndex, datasets: list[DatasetPlan], tile_dirs: dict[str, str],
               present: dict[str, set[TileIndex]], schema: pa.Schema) -> Iterable[pa.Table]:
    """The rows of one tile's valid cells, in strips of about ROW_GROUP_CELLS cells. Each dataset's
    tile is read a strip at a time (whole blocks of rows), so the job holds one strip of every
    dataset, not a tile of each: twenty datasets of 4,096 px tiles would be 1.3 GB."""
    window = grid.tile(index).window
    height, width = int(window.height), int(window.width)
    with contextlib.ExitStack() as stack:
        sources = []  # per dataset: an open tile or None, and its bands
        for dataset in datasets:
            count = len(dataset.band_names) or 1
            if index not in present[dataset.name]:
                sources.append((None, dataset, count))
                continue
            path = str(index.path(tile_dirs[dataset.name]))
            try:
                src = stack.enter_context(rasterio.open(path))
            except (rasterio.errors.RasterioIOError, OSError) as exc:
                raise _unreadable(path, dataset, exc) from exc
            if (src.count, src.height, src.width) != (count, height, width):
                raise TileReadError(f"tile {path} of dataset '{dataset.name}' is {(src.count, src.height, src.width)} "
                                    f"(bands, rows, columns), not {(count, height, width)}; remove it and run the "
                                    "workflow again")
            sources.append((src, dataset, count))
        # Strips of about ROW_GROUP_CELLS cells, of whole blocks of rows where that is a block or
        # more (each block decoded once).
        block = math.lcm(*(src.block_shapes[0][0] for src, _, _ in sources if src is not None), 1)
        strip = max(1, ROW_GROUP_CELLS // width)
        strip = strip // block * block if strip >= block else strip
        t = grid.transform
        for top in range(0, height, strip):
            rows_here = min(strip, height - top)
            bands = []  # (data, valid) per column, in the schema's order; None where the dataset has no tile
            for src, dataset, count in sources:
                if src is None:
                    bands.extend([None] * count)
                    continue
                try:
                    data = src.read(window=Window(0, top, width, rows_here))
                except (rasterio.errors.RasterioIOError, OSError) as exc:
                    raise _unreadable(src.name, dataset, exc) from exc
                bands.extend((b, _valid(b, dataset.settings.dst_nodata)) for b in data)
            any_valid = np.zeros((rows_here, width), bool)
            for band in bands:
                if band is not None:
                    any_valid |= band[1]
            rows, cols = np.nonzero(any_valid)
            if not len(rows):
                continue
            # Centres as the Zarr store's coordinates compute them (first + (i + 0.5) * step).
            cx, cy = cols + (int(window.col_off) + 0.5), rows + (top + int(window.row_off) + 0.5)
            arrays = [pa.array(rows + top + int(window.row_off), pa.int32()),
                      pa.array(cols + int(window.col_off), pa.int32()),
                      pa.array(t.a * cx + t.b * cy + t.c), pa.array(t.d * cx + t.e * cy + t.f)]
            for field, band in zip(list(schema)[4:], bands):
                if band is None:
                    arrays.append(pa.nulls(len(rows), field.type))
                else:
                    arrays.append(pa.array(band[0][rows, cols], field.type, mask=~band[1][rows, cols]))
            yield pa.Table.from_arrays(arrays, schema=schema)


def _unreadable(path: str, dataset: DatasetPlan, exc: Exception) -> TileReadError:
    return TileReadError(f"tile {path} of dataset '{dataset.name}' cannot be read for results/table/ ({exc}); "
                         "run the workflow again to make it anew")


def write_table_part(path: str, grid: TargetGrid, area: Area, datasets: list[DatasetPlan],
                     tile_dirs: dict[str, str], tiles: dict[str, Iterable[TileIndex]]) -> int:
    """Write the rows of an area (its tiles of any dataset, ``tiles`` by dataset: those the batches
    made) to ``path``; returns how many. A file without rows still has the table's schema."""
    schema = table_schema(grid, datasets)
    present = {name: {t for t in found if area.holds(t)} for name, found in tiles.items()}
    present.update({d.name: set() for d in datasets if d.name not in present})
    count = 0
    try:
        with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd",
                                                        compression_level=ZSTD_LEVEL) as writer:
            for index in sorted(set().union(*present.values())):
                for rows in _tile_rows(grid, index, datasets, tile_dirs, present, schema):
                    writer.write_table(rows)
                    count += rows.num_rows
    except OSError as exc:
        raise OutputWriteError(path, exc) from exc
    return count


def finish_table(folder: str, grid: TargetGrid, datasets: list[DatasetPlan], areas: list[str]) -> list[str]:
    """Once every area's file is written: remove the files of areas no longer in the run (another
    grid or tiling) and any writer's leftovers, and write ``_common_metadata``, the schema alone.
    Returns the removed files."""
    keep = {os.path.join(folder, os.path.basename(table_part_path(a))) for a in areas}
    removed = []
    for path in sorted(glob.glob(os.path.join(folder, "*.parquet")) +
                       glob.glob(os.path.join(folder, f"{TMP_PREFIX}*"))):
        if path not in keep:
            os.unlink(path)
            removed.append(path)
    target = os.path.join(folder, "_common_metadata")
    try:
        with atomic_path(target) as tmp:
            pq.write_metadata(table_schema(grid, datasets), tmp)
    except OSError as exc:
        raise OutputWriteError(target, exc) from exc
    return removed


def table_facts(folder: str) -> dict | None:
    """For ``onegrid results``: the files, rows and bytes of a finished table; None if unfinished."""
    if not os.path.exists(os.path.join(folder, "_common_metadata")):
        return None
    parts = sorted(glob.glob(os.path.join(folder, "*.parquet")))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    columns = pq.read_schema(os.path.join(folder, "_common_metadata")).names
    return {"path": folder, "files": len(parts), "rows": rows, "columns": columns,
            "bytes": sum(os.path.getsize(p) for p in parts)}
