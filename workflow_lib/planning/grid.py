"""The target grid and its tiles.

A target grid is a CRS, a north-up pixel size and an extent snapped to a grid origin, so that two
runs with the same origin and resolution put pixel edges in the same places. It is cut into square
tiles of ``tile_size`` output pixels; the last row and column of tiles may be smaller.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from workflow_lib.domain import TileIndex

# Tolerance, in pixels, for deciding that a bound already lies on a grid line: without it, float
# noise in a bound such as 1000.0000000001 would add a whole column of empty pixels.
_SNAP_EPS = 1e-6
# The Zarr store's overview levels (TargetGrid.overview_factors): each level's chunks are its tiles'
# parts, made by the batch job that makes the tile, so they shrink with the factor; below 32 pixels
# a side (4 KB of float32) a chunk costs more to find than to read. A level is made only while the
# level before it is larger than a quicklook or a screen's map needs (128 pixels).
LEVEL_MIN_CHUNK = 32
LEVEL_MIN_SIDE = 128


@dataclass(frozen=True)
class Tile:
    """One tile of the target grid: the unit of work and of checkpointing."""

    index: TileIndex
    window: Window  # on the target grid
    transform: Affine  # of this tile's top-left pixel

    @property
    def id(self) -> str:
        return self.index.id

    @property
    def width(self) -> int:
        return int(self.window.width)

    @property
    def height(self) -> int:
        return int(self.window.height)


@dataclass(frozen=True)
class TargetGrid:
    """A north-up grid: ``transform`` maps pixel (col, row) to target CRS coordinates."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    tile_size: int

    @classmethod
    def from_bounds(
        cls,
        crs: CRS,
        bounds: tuple[float, float, float, float],
        resolution: tuple[float, float],
        origin: tuple[float, float],
        tile_size: int,
    ) -> "TargetGrid":
        """The smallest grid aligned on ``origin`` that covers ``bounds`` (left, bottom, right, top)."""
        left, bottom, right, top = bounds
        res_x, res_y = resolution
        origin_x, origin_y = origin
        if not (res_x > 0 and res_y > 0):
            raise ValueError(f"resolution must be positive, got {resolution}")
        if not (right > left and top > bottom):
            raise ValueError(f"empty extent {bounds}")
        col_min = math.floor((left - origin_x) / res_x + _SNAP_EPS)
        col_max = math.ceil((right - origin_x) / res_x - _SNAP_EPS)
        row_min = math.floor((origin_y - top) / res_y + _SNAP_EPS)
        row_max = math.ceil((origin_y - bottom) / res_y - _SNAP_EPS)
        transform = Affine(res_x, 0.0, origin_x + col_min * res_x, 0.0, -res_y, origin_y - row_min * res_y)
        return cls(crs, transform, max(col_max - col_min, 1), max(row_max - row_min, 1), tile_size)

    @property
    def resolution(self) -> tuple[float, float]:
        return self.transform.a, -self.transform.e

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        right, bottom = self.transform @ (self.width, self.height)
        return left, bottom, right, top

    @property
    def tile_rows(self) -> int:
        return math.ceil(self.height / self.tile_size)

    @property
    def tile_cols(self) -> int:
        return math.ceil(self.width / self.tile_size)

    def level(self, factor: int) -> "TargetGrid":
        """The grid of an overview level: pixels ``factor`` times larger from the same origin, tiles
        as many (each ``tile_size / factor`` pixels). Where the grid's size is not a multiple of the
        factor, the level's last column and row reach past the grid's edge (their pixels are made
        from the part inside), so that each level pixel is one whole block of grid pixels."""
        return TargetGrid(self.crs, self.transform @ Affine.scale(factor), -(-self.width // factor),
                          -(-self.height // factor), self.tile_size // factor)

    def overview_factors(self) -> tuple[int, ...]:
        """The Zarr store's overview levels (mosaics.zarr_store): factors 2, 4, 8, ... while the level
        before is larger than LEVEL_MIN_SIDE on its longest side; none if no level can be made from
        the tiles (tile_level_factors), from which the coarser ones are made."""
        return self._level_candidates() if self.tile_level_factors() else ()

    def tile_level_factors(self) -> tuple[int, ...]:
        """The overview levels that each tile's batch job writes its part of (a chunk of
        ``tile_size / factor`` pixels): the first of them whose chunks keep at least
        LEVEL_MIN_CHUNK pixels a side. The coarser ones are made at the end, from the last of these
        (and its counts of valid pixels), by the job that finishes the store."""
        return tuple(itertools.takewhile(
            lambda f: self.tile_size % f == 0 and self.tile_size // f >= LEVEL_MIN_CHUNK, self._level_candidates()))

    def _level_candidates(self) -> tuple[int, ...]:
        factors, f = [], 2
        while max(-(-self.width // (f // 2)), -(-self.height // (f // 2))) > LEVEL_MIN_SIDE:
            factors.append(f)
            f *= 2
        return tuple(factors)

    @cached_property
    def tile_transform(self) -> Affine:
        """Maps (tile col, tile row) to target coordinates: one 'pixel' per tile."""
        return self.transform @ Affine.scale(self.tile_size)

    def tile(self, index: TileIndex) -> Tile:
        if not (0 <= index.row < self.tile_rows and 0 <= index.col < self.tile_cols):
            raise ValueError(f"tile {index.id} is outside a grid of {self.tile_rows} x {self.tile_cols} tiles")
        col_off, row_off = index.col * self.tile_size, index.row * self.tile_size
        window = Window(
            col_off,
            row_off,
            min(self.tile_size, self.width - col_off),
            min(self.tile_size, self.height - row_off),
        )
        return Tile(index, window, window_transform(window, self.transform))

    def to_dict(self) -> dict:
        return {
            "crs": self.crs.to_wkt(),
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
            "tile_size": self.tile_size,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "TargetGrid":
        return cls(
            CRS.from_wkt(data["crs"]),
            Affine(*data["transform"]),
            int(data["width"]),
            int(data["height"]),
            int(data["tile_size"]),
        )
