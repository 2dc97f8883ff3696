"""Batches: the unit of scheduling. A batch is a compact rectangle of one dataset's tile grid.

A tile stays the unit of checkpointing (its own file); a batch is one Snakemake (or SLURM) job that
makes the tiles of its rectangle that are missing. Every job has a fixed cost (an interpreter,
imports, Snakemake's script preamble, scheduling: 1-2 s measured, docs/how-it-works.md), and
Snakemake's planning costs grow with the number of jobs (about 4 ms and 20 KB each), so batches are
sized to make both negligible: at most about ``MAX_JOBS`` resample jobs per run, and each with at
least ``MIN_BATCH_WORK`` of work; on a machine of many cores, less (down to ``MIN_SPLIT_WORK``,
or ``MIN_WAVE_WORK`` for one job per slot) where that is what it takes to keep every core busy.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import cached_property

from workflow_lib.domain import TileIndex

# The most resample jobs a run should have: Snakemake plans 2,000 jobs in about 8 s.
MAX_JOBS = 2000
# Work, in source pixels read plus output pixels written, below which a job's fixed cost (1-2 s:
# the interpreter, imports, loading the compiled kernels, Snakemake's preamble) is no longer small.
# Measured 2026-12-04 on a 2-thread job: the block engine's compiled kernels do 1.3e8 (float32
# average) to 3.2e8 (uint8 mode) a second, GDAL's warper across CRSs 4.4e7; so 4e9 is 12-30 s of
# the block engine (1e9, the value before the kernels, left 23-42 % of such a job to its start).
MIN_BATCH_WORK = 4e9
# A run on many cores wants enough jobs to keep every core busy to the end (a run of one job of
# two threads leaves 14 of 16 cores idle): each dataset is then cut into more batches, down to this
# much work each (about 4-8 s of the block engine, several times a job's fixed cost).
MIN_SPLIT_WORK = 1e9
# Jobs per slot (cores / threads per job) that a run on many cores aims for: the last wave of a
# list schedule leaves cores idle for at most about a third of a job's time.
WAVES = 3
# Down to one job per slot, a run is cut further, as long as each job keeps this much work (about
# 3 s of a 2-thread job of the block engine, more than a job's start of 1-2 s): while there are no
# more jobs than slots, each cut shortens the run by more than the start it adds, on a core that
# would otherwise idle. bench/makespan.py, 2026-12-08: the 40,000^2 case on 16 cores, 2 batches ->
# 8, 33.9 s -> 18.7 s predicted with the stack beside the mosaic (bench/README.md).
MIN_WAVE_WORK = 3e8
_RECTANGLE_ID = re.compile(r"([a-z])(\d+)_(\d+)_(\d+)x(\d+)")


@dataclass(frozen=True)
class Batch:
    """Tiles ``rows`` x ``cols`` (half-open ranges of tile rows and columns) of one dataset."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    # The planned tiles inside the rectangle, row by row, by id as the plan file keeps them: a plan
    # of a million tiles is read at every parse, and only the jobs and views that need a batch's
    # tiles make TileIndex values of them (``tiles``).
    tile_ids: tuple[str, ...]

    @cached_property
    def tiles(self) -> tuple[TileIndex, ...]:
        return tuple(TileIndex.parse(t) for t in self.tile_ids)

    @property
    def id(self) -> str:
        return batch_id(self.rows, self.cols)

    @property
    def tile_range(self) -> str:
        """As a person reads it: "tiles r0000-0007 x c0008-0015" (inclusive)."""
        return (f"tile rows {self.rows[0]:04d}-{self.rows[1] - 1:04d}, "
                f"columns {self.cols[0]:04d}-{self.cols[1] - 1:04d}")

    def to_list(self) -> list:
        return [list(self.rows), list(self.cols), list(self.tile_ids)]

    @classmethod
    def from_list(cls, data: list) -> "Batch":
        return cls(tuple(data[0]), tuple(data[1]), tuple(data[2]))


def batch_id(rows: tuple[int, int], cols: tuple[int, int], prefix: str = "b") -> str:
    """The first tile row and column, and the rectangle's size: b0008_0016_8x8 (8 rows, 8 columns).
    ``prefix``: "b" for a batch, "a" for an area of the table (planning.table)."""
    return f"{prefix}{rows[0]:04d}_{cols[0]:04d}_{rows[1] - rows[0]}x{cols[1] - cols[0]}"


def parse_batch_id(text: str, prefix: str = "b") -> tuple[tuple[int, int], tuple[int, int]]:
    """The first tile (row, column) and the size (rows, columns) a batch id (or, with ``prefix``
    "a", an area id) names. Raises ValueError for anything else."""
    match = _RECTANGLE_ID.fullmatch(text)
    if not match or match.group(1) != prefix:
        raise ValueError(f"not a{'n area' if prefix == 'a' else ' batch'} id: {text!r}")
    row, col, height, width = map(int, match.groups()[1:])
    return (row, col), (height, width)


def machine_cores() -> int:
    """The cores this process may use (its CPU affinity: a cgroup or taskset may grant fewer than
    the machine has). The plan's batches are sized for them, not for ``--cores``: a plan must not
    change (and its batches rerun) when a resumed run is given other --cores."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def tiles_per_batch(tile_work: float, tiles_in_dataset: int, tiles_in_run: int, slots: int = 1) -> int:
    """How many tiles one job of this dataset makes: enough work per job, few enough jobs, and, on
    a machine that runs ``slots`` jobs at once (cores / threads per job), enough jobs to keep them
    all busy to the end: about ``WAVES`` per slot as long as each keeps ``MIN_SPLIT_WORK``, and at
    least one per slot as long as each keeps ``MIN_WAVE_WORK``.

    ``tile_work`` is the estimated work of one tile (source pixels read plus pixels written).
    """
    tile_work = max(tile_work, 1.0)
    by_work = math.ceil(MIN_BATCH_WORK / tile_work)
    if slots > 1:
        waves = max(math.ceil(tiles_in_run / (WAVES * slots)), math.ceil(MIN_SPLIT_WORK / tile_work))
        one_wave = max(math.ceil(tiles_in_run / slots), math.ceil(MIN_WAVE_WORK / tile_work))
        by_work = min(by_work, waves, one_wave)
    by_count = math.ceil(tiles_in_run / MAX_JOBS)
    return max(1, min(tiles_in_dataset, max(by_work, by_count)))


def rectangle(per_batch: int, tile_rows: int, tile_cols: int) -> tuple[int, int]:
    """Rows and columns of tiles in a batch of at most ``per_batch`` tiles: the shape that cuts the
    tile grid into the fewest rectangles (every job has a fixed cost, and a leftover strip of small
    batches pays it for little work), and among those the squarest (neighbouring tiles read
    neighbouring parts of the input, so a batch reads less twice), wide before tall."""
    per_batch = max(1, per_batch)
    best = None
    for h in range(1, min(tile_rows, per_batch) + 1):
        widest = min(tile_cols, per_batch // h)
        n_cols = -(-tile_cols // widest)
        # Every width from the narrowest that still makes n_cols columns up to the widest gives the
        # same rectangles' count: take the one closest to square.
        w = min(max(h, -(-tile_cols // n_cols)), widest)
        key = (-(-tile_rows // h) * n_cols, max(h / w, w / h), h > w)
        if best is None or key < best[0]:
            best = (key, (h, w))
    return best[1]


def make_batches(tiles: list[TileIndex], tile_rows: int, tile_cols: int, per_batch: int,
                 max_batches: int | None = None) -> list[Batch]:
    """Cut a dataset's planned tiles (row by row) into rectangles of about
    ``per_batch`` tiles. Rectangles without a planned tile are no batch. ``max_batches``: grow the
    rectangles until there are at most that many (a sparse dataset, say a coastline, leaves many
    rectangles nearly empty)."""
    while True:
        h, w = rectangle(per_batch, tile_rows, tile_cols)
        groups: dict[tuple[int, int], list[TileIndex]] = {}
        for t in tiles:
            groups.setdefault((t.row // h, t.col // w), []).append(t)
        if max_batches is None or len(groups) <= max_batches or (h >= tile_rows and w >= tile_cols):
            break
        per_batch *= 2
    batches = []
    for (br, bc), members in sorted(groups.items()):
        rows = (br * h, min((br + 1) * h, tile_rows))
        cols = (bc * w, min((bc + 1) * w, tile_cols))
        batches.append(Batch(rows, cols, tuple(t.id for t in members)))
    return batches


# Beyond this many tiles a dataset's Zarr array is sharded: one file per batch (mosaics.zarr_store),
# so that a plan of a million tiles makes at most about MAX_JOBS files per array, not a million.
SHARD_MIN_TILES = 10_000


def shard_tiles(batches: tuple[Batch, ...], tile_count: int) -> tuple[int, int] | None:
    """Tile rows and columns of a Zarr shard of the dataset: its batches' rectangle (all of a
    dataset's batches are cut from one grid of rectangles, make_batches; the widest and tallest
    are whole ones, unless the grid itself is smaller), or None below SHARD_MIN_TILES tiles."""
    if tile_count <= SHARD_MIN_TILES or not batches:
        return None
    return (max(b.rows[1] - b.rows[0] for b in batches), max(b.cols[1] - b.cols[0] for b in batches))


def shard_index(batch: str, shard: tuple[int, int]) -> TileIndex:
    """The shard of a batch (by its id) on the array's grid of shards: one shard is one batch."""
    (row, col), _ = parse_batch_id(batch)
    return TileIndex(row // shard[0], col // shard[1])
