"""Which engine resamples a dataset, decided from its header and the target grid alone.

The geometry of the two NumPy engines lives here too, because the decision is theirs to make:
where target pixels are whole blocks of input pixels (``block_geometry``), and where each target
pixel's rectangle of input pixels is small enough to gather (``window_geometry_reason``).
Planning calls ``choose_engine`` without importing an engine; the engines import the geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine

from workflow_lib.domain import Engine, Method

# Relative tolerance for calling a resolution ratio an integer and an offset a whole pixel: headers
# hold decimal resolutions (0.1, 1/3600) that are not exact in binary.
ALIGN_RTOL = 1e-9
# Most positions (input pixels) in one target pixel's window that the window engine takes on: it
# makes one vectorised pass per position, and beyond this GDAL's warper, which visits each input
# pixel once, is faster by far (a 1 m raster onto 3 km: 9 million positions).
MAX_WINDOW_POSITIONS = 4096


@dataclass(frozen=True)
class BlockGeometry:
    """Target pixels are kx x ky input pixels; the target origin is input pixel (col_off, row_off)."""

    kx: int
    ky: int
    col_off: int
    row_off: int


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    reason: str  # in words, for the register job's log and the plan: "aligned 2x2 blocks"


def _whole(value: float) -> int | None:
    nearest = round(value)
    return int(nearest) if abs(value - nearest) <= ALIGN_RTOL * max(1.0, abs(value)) else None


def _north_up_reason(src_transform: Affine, dst_transform: Affine) -> str | None:
    a, b, _, d, e, _ = tuple(src_transform)[:6]
    A, B, _, D, E, _ = tuple(dst_transform)[:6]
    if b or d or B or D:
        return "the input's geotransform is rotated or sheared"
    if e >= 0 or E >= 0 or a <= 0 or A <= 0:
        return "the input is not north-up"
    return None


def block_geometry(src_transform: Affine, dst_transform: Affine) -> tuple[BlockGeometry | None, str]:
    """How ``dst_transform``'s pixels sit on ``src_transform``'s, or None and why they do not align."""
    why = _north_up_reason(src_transform, dst_transform)
    if why is not None:
        return None, why
    a, _, c, _, e, f = tuple(src_transform)[:6]
    A, _, C, _, E, F = tuple(dst_transform)[:6]
    kx, ky = _whole(A / a), _whole(E / e)
    if not kx or not ky:
        return None, f"target pixels are {A / a:.6g} x {E / e:.6g} input pixels, not whole numbers"
    col_off, row_off = _whole((C - c) / a), _whole((F - f) / e)
    if col_off is None or row_off is None:
        return None, "the target grid's pixel corners fall between the input's"
    return BlockGeometry(kx, ky, col_off, row_off), f"aligned {kx}x{ky} blocks"


def window_geometry_reason(src_transform: Affine, dst_transform: Affine) -> str | None:
    """None when the window engine can map ``dst_transform``'s pixels onto ``src_transform``'s,
    else why not."""
    why = _north_up_reason(src_transform, dst_transform)
    if why is not None:
        return why
    positions = (math.ceil(dst_transform.a / src_transform.a) + 1) * (math.ceil(dst_transform.e / src_transform.e) + 1)
    if positions > MAX_WINDOW_POSITIONS:
        return f"windows of up to {positions} input pixels (more than {MAX_WINDOW_POSITIONS})"
    return None


def choose_engine(requested: str, method: Method, same_crs: bool, src_transform: Affine,
                  dst_transform: Affine, coverage: bool = False) -> EngineChoice:
    """The engine for a dataset and why. ``requested``: the config's auto, numpy, conservative or
    gdal; ``coverage``: the dataset asks for the share of each target pixel covered (a band, or a
    least share), which only the conservative engine measures.

    Where target pixels are whole blocks of input pixels, "auto" takes the block engine: its result
    is the exact block reduction, the same for every tiling, and equal to GDAL's wherever GDAL's is
    exact (docs/engines.md, for where it is not); the area methods onto unaligned north-up grids
    in one CRS take the window engine. Average, sum, mode and fractions otherwise take the
    conservative engine: between CRSs, GDAL's average is no area-weighted mean (docs/accuracy.md).
    Asking for an engine that cannot do what the dataset needs is an error
    (ValueError), so that a config never silently gets something else than it asked for.
    """
    method = Method(method)
    if requested == "gdal":
        if method is Method.FRACTIONS or coverage:
            raise ValueError("GDAL's warper gives no class fractions or coverage; use engine auto or conservative")
        return EngineChoice(Engine.WARP, "asked for in the config")
    if requested == "conservative":
        if not method.is_conservative:
            raise ValueError(f"the conservative engine does average, sum, mode and fractions, not {method}")
        return EngineChoice(Engine.CONSERVATIVE, "asked for in the config")
    asked = ", asked for in the config" if requested == "numpy" else ""
    geometry = None
    if method is Method.FRACTIONS:
        reason = "class fractions"
    elif coverage:
        reason = "the coverage of target pixels"
    elif not same_crs:
        reason = "the input and the target are in different CRSs"
    elif not method.is_block_reduction:
        reason = f"method {method} is an interpolation, not a block reduction"
    else:
        geometry, reason = block_geometry(src_transform, dst_transform)
    if geometry is not None:
        return EngineChoice(Engine.BLOCKS, reason + asked)
    window_ok = same_crs and method.is_area and not coverage
    if window_ok and window_geometry_reason(src_transform, dst_transform) is None:
        # Unaligned area methods within one CRS: the rectangle of input pixels under each target
        # pixel, the same for every tiling (engines.windows).
        return EngineChoice(Engine.WINDOWS, f"{reason}: unaligned windows{asked}")
    if requested == "numpy":
        raise ValueError(f"the numpy engine cannot be used: {reason}")
    if method.is_conservative:
        # Footprints clipped on the target grid: area weights measured in the target CRS.
        return EngineChoice(Engine.CONSERVATIVE, f"{reason}: areas of footprints")
    return EngineChoice(Engine.WARP, reason)
