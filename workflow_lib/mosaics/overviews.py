"""Overview levels of a mosaic, made tile by tile from each tile's full-resolution pixels.

A mosaic (a COG) carries overviews: the grid reduced by 2, 4, 8, ... until it fits one 512 px block.
Left to GDAL, the COG driver builds them from the VRT of the tiles, reading every tile once for the
overviews and once more for the copy, and computes each level from the previous one: an average of
averages, which is not the average of the pixels where blocks hold nodata (measured: 0.2 off with a
third of the pixels missing; tests/test_overviews.py shows it).

Here each tile job builds its tile's levels, one level at a time so that GDAL computes each from the
tile's full-resolution pixels (given all levels at once it cascades too). Tiles start at multiples of
the tile size, so a tile's level f is exactly its part of the mosaic's level f when f divides the
tile size. The mosaic then reads each level from the tiles' levels (mosaics.mosaic) and each tile's
full resolution once.
"""

from __future__ import annotations

import rasterio
from rasterio.enums import Resampling

from workflow_lib.errors import GDAL_ERRORS, OutputWriteError
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.settings import CATEGORICAL_METHODS

# The mosaic's block size (and the COG driver's threshold for its smallest level).
COG_BLOCK = 512
# Tag of a tile file: the overview factors it carries, "2,4,8" ("" for none).
OVERVIEWS_TAG = "WORKFLOW_TILE_OVERVIEWS"


def mosaic_factors(width: int, height: int, block: int = COG_BLOCK) -> list[int]:
    """The overview factors GDAL's COG driver gives a raster of this size: halved until it fits
    one block (integer division, as the driver does; checked against it in the tests)."""
    factors, f = [], 1
    while max(width // f, height // f) > block:
        f *= 2
        factors.append(f)
    return factors


def tile_factors(grid: TargetGrid) -> list[int]:
    """The mosaic's factors that a tile can make alone: those that divide the tile size (all of them
    up to the tile size when it is a power of two, as the default 1024 is). A grid wider than 512
    tiles has its coarsest levels left out: its smallest level is then one pixel per tile."""
    return [f for f in mosaic_factors(grid.width, grid.height) if grid.tile_size % f == 0]


def resampling_for(method: str) -> Resampling:
    """Averages for continuous data; a pixel, not a blend, for classes and order statistics."""
    return Resampling.nearest if method in CATEGORICAL_METHODS else Resampling.average


def build_tile_overviews(path: str, out_path: str, factors: list[int], method: str) -> None:
    """Add the overview levels ``factors`` to the tile file ``path`` (to become ``out_path``), each
    computed from its full-resolution pixels."""
    try:
        with rasterio.open(path, "r+") as dst:
            for f in factors:  # one call per level: GDAL computes each from the full resolution
                dst.build_overviews([f], resampling_for(method))
    except GDAL_ERRORS as exc:
        raise OutputWriteError(out_path, exc) from exc


def factors_tag(factors: list[int]) -> str:
    return ",".join(str(f) for f in factors)


def parse_factors_tag(tags: dict) -> list[int] | None:
    """The factors a tile's tags say it carries; None for a tile made before tiles had overviews."""
    value = tags.get(OVERVIEWS_TAG)
    if value is None:
        return None
    return [int(f) for f in value.split(",") if f]
