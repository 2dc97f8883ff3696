"""The target grid and its tiles.

A target grid is a CRS, a north-up pixel size and an extent snapped to a grid origin, so that two
runs with the same origin and resolution put pixel edges in the same places. It is cut into square
tiles of ``tile_size`` output pixels; the last row and column of tiles may be smaller.
"""

from __future__ import annotations

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
