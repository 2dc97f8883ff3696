"""What a tile was made with: a digest of everything that shapes its pixels, kept in the tile's
own tags. A tile on disk whose digest is not the plan's is made again."""

from __future__ import annotations

import hashlib
import json
import os

import rasterio

from workflow_lib.errors import GDAL_ERRORS
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.domain import tile_file_name
from workflow_lib.planning.batches import Batch
from workflow_lib.planning.plan import DatasetPlan

DIGEST_TAG = "WORKFLOW_TILE_DIGEST"
# Bump when a change to the engines changes the pixels of tiles already made (they are remade).
PIXELS_VERSION = 1


def tile_digest(grid: TargetGrid, dataset: DatasetPlan) -> str:
    """What shapes a tile's pixels: the grid, the dataset's settings and its input file as planned
    (a changed file has another size or modification time). Not the compression: it changes bytes,
    not pixels."""
    h = dataset.header
    parts = [[p.header.path, p.header.size_bytes, p.header.mtime_ns, p.settings.to_dict()] for p in dataset.parts]
    text = json.dumps({"pixels": PIXELS_VERSION, "grid": grid.to_dict(), "settings": dataset.settings.to_dict(),
                       "input": [h.path, h.size_bytes, h.mtime_ns], **({"parts": parts} if parts else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def tile_tags(path: str) -> dict | None:
    """A tile file's tags (its digest, its statistics); None if there is no readable tile there."""
    if not os.path.exists(path):
        return None
    try:
        with rasterio.open(path) as src:
            return src.tags()
    except GDAL_ERRORS:
        return None  # a damaged file: made again


def made_with(path: str) -> str | None:
    """The digest a tile file was made with; None if there is no readable tile there."""
    tags = tile_tags(path)
    return None if tags is None else tags.get(DIGEST_TAG)


class TilesToMake:
    """A batch's tiles to make, counted when shown (in a job's message, in a dry run): those
    missing on disk, and those made with another digest (other settings, another input). Reading a
    tile's digest opens it (about 1 ms): the first and the last tile of the batch on disk are read,
    and every one only when they disagree (a batch stopped half-way through a change of settings).

    Its text changes as tiles are made, so it must not be a rerun trigger: Snakemake keeps only
    parameters of plain types in its metadata, and this is none.
    """

    def __init__(self, batch: Batch, tile_dir: str, digest: str):
        self.batch = batch
        self.tile_dir = tile_dir
        self.digest = digest

    def count(self) -> int:
        ids = self.batch.tile_ids
        on_disk = [t for t in ids if os.path.exists(self._path(t))]
        return len(ids) - len(on_disk) + self._stale(on_disk)

    def _stale(self, on_disk: list[str]) -> int:
        if not on_disk:
            return 0
        ends = {made_with(self._path(t)) == self.digest for t in {on_disk[0], on_disk[-1]}}
        if ends == {True}:
            return 0
        if ends == {False}:
            return len(on_disk)
        return sum(made_with(self._path(t)) != self.digest for t in on_disk)

    def _path(self, tile_id: str) -> str:
        return os.path.join(self.tile_dir, tile_file_name(tile_id))

    def __str__(self) -> str:
        return f"{self.batch.tile_range}, {self.count()} of {len(self.batch.tile_ids)} tiles to make"

    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731 - str.format uses __format__

    def __repr__(self) -> str:
        return f"TilesToMake({self.batch.id!r}, {self.tile_dir!r})"

    def __reduce__(self):
        # Pickled into the job's script as plain text: unpickling this class would import the
        # library (and numpy) before the job's script has set up its environment.
        return (str, (str(self),))
