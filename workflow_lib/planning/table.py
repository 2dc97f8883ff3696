"""The per-cell table's plan (config ``output.table: parquet``): its columns and its areas.

The table has one row per cell valid in at least one dataset, and one column per dataset band, so a
row needs every dataset's tiles at that cell: it cannot be written by one dataset's batches. It is
cut into areas instead, rectangles of the tile grid, each written by its own job as one Parquet file
once the batches of every dataset under it are done. The areas come from the batches' rectangles
(no tile list is read at parse time), so that a dry run shows every job.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow_lib.domain import TABLE_COLUMNS, TileIndex
from workflow_lib.errors import ConfigError
from workflow_lib.planning.batches import MAX_JOBS, batch_id, parse_batch_id, rectangle

# Cells per area: a file of 2**25 rows (32 tiles of 1,024 px) is about 150-400 MB of Parquet for a
# few float32 layers, as big as readers like their files, and a 40,000 x 40,000 grid makes 48 of them.
# A job holds one tile's rows at a time, never the area's (a row group per tile).
AREA_CELLS = 2 ** 25
AREA_ID_PATTERN = r"a\d+_\d+_\d+x\d+"  # Snakemake's wildcard constraint


@dataclass(frozen=True)
class Area:
    """Tiles ``rows`` x ``cols`` (half-open ranges of tile rows and columns) of the grid, and the
    batches (dataset, batch id) whose rectangles overlap them."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    batches: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        """Named as batches are, with an "a": a0008_0016_8x8 (8 tile rows, 8 columns)."""
        return batch_id(self.rows, self.cols, prefix="a")

    @classmethod
    def parse(cls, text: str) -> "Area":
        """The area an id names (its rectangle; not its batches). Raises ValueError for anything else."""
        (r, c), (h, w) = parse_batch_id(text, prefix="a")
        return cls((r, r + h), (c, c + w), ())

    def holds(self, index: TileIndex) -> bool:
        return self.rows[0] <= index.row < self.rows[1] and self.cols[0] <= index.col < self.cols[1]


def table_areas(plan) -> list[Area]:
    """The areas of the table: rectangles of about AREA_CELLS cells that some dataset's batch
    overlaps (one may hold no planned tile, where a sparse batch's rectangle reaches it: its file
    has no row), at most about MAX_JOBS of them."""
    grid = plan.grid
    per_area = max(1, AREA_CELLS // grid.tile_size ** 2)
    while True:
        h, w = rectangle(per_area, grid.tile_rows, grid.tile_cols)
        found: dict[tuple[int, int], list[tuple[str, str]]] = {}
        for name, dataset in plan.datasets.items():
            for batch in dataset.batches:
                for ar in range(batch.rows[0] // h, (batch.rows[1] - 1) // h + 1):
                    for ac in range(batch.cols[0] // w, (batch.cols[1] - 1) // w + 1):
                        found.setdefault((ar, ac), []).append((name, batch.id))
        if len(found) <= MAX_JOBS or (h >= grid.tile_rows and w >= grid.tile_cols):
            break
        per_area *= 2
    return [Area((ar * h, min((ar + 1) * h, grid.tile_rows)), (ac * w, min((ac + 1) * w, grid.tile_cols)),
                 tuple(batches)) for (ar, ac), batches in sorted(found.items())]


def table_columns(datasets) -> list[tuple[str, str, int]]:
    """The table's columns after its own (TABLE_COLUMNS): (column, dataset, band) for each band of
    each dataset, named by the dataset alone for one band, else ``<dataset>_<band name>`` (a band
    name that starts with it already, as ``landcover_10``, as it is). Raises ConfigError where two
    would share a name."""
    columns = []
    for dataset in datasets:
        names = dataset.band_names or (dataset.name,)
        for band, label in enumerate(names, start=1):
            column = dataset.name if len(names) == 1 else (
                label if label.startswith(f"{dataset.name}_") else f"{dataset.name}_{label}")
            columns.append((column, dataset.name, band))
    seen = {c: "the table's own column" for c in TABLE_COLUMNS}
    for column, name, band in columns:
        if column in seen:
            raise ConfigError(f"datasets.{name}: its band {band} would be the column '{column}' of results/table/ "
                              f"(output.table: parquet), which is {seen[column]}; rename the dataset")
        seen[column] = f"band {band} of dataset '{name}'"
    return columns
