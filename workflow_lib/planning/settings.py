"""How one dataset is warped: fixed once per dataset so that every tile agrees."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from workflow_lib.sources.header import RasterHeader, _json_number, _number_from_json, check_nodata_fits

# Methods whose outputs are classes or picks of input values: their overviews must pick too.
CATEGORICAL_METHODS = {"nearest", "mode", "min", "max", "med"}


@dataclass(frozen=True)
class WarpSettings:
    method: str
    band: int
    src_nodata: float | None  # value GDAL treats as missing in the input (NaN allowed)
    dst_nodata: float  # value written where there is no data
    dst_dtype: str
    x_scale: float  # GDAL warp option XSCALE: target pixels per source pixel
    y_scale: float  # GDAL warp option YSCALE
    error_threshold: float  # GDAL's approximate transformer's error across CRSs, in pixels
    same_crs: bool  # input and target share one CRS: the transformation is affine
    engine: str = "gdal"  # "numpy" (aligned blocks, workflow_lib.blocks) or "gdal" (GDAL's warper)
    engine_reason: str = ""
    # Several bands (config "bands"): each resampled as ``band`` is, into one multi-band tile;
    # empty for one band.
    bands: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        # Left out for one band: tiles made before "bands" existed keep their digest (engines.batch).
        if self.bands:
            data["bands"] = list(self.bands)
        else:
            del data["bands"]
        data["src_nodata"] = _json_number(self.src_nodata)
        data["dst_nodata"] = _json_number(self.dst_nodata)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "WarpSettings":
        data = dict(data)
        data["src_nodata"] = _number_from_json(data["src_nodata"])
        data["dst_nodata"] = _number_from_json(data["dst_nodata"])
        data["bands"] = tuple(data.get("bands", ()))
        return cls(**data)


def default_nodata(dtype: str) -> float:
    """Nodata for outputs of inputs that declare none: NaN for reals, else an extreme value."""
    kind = np.dtype(dtype).kind
    if kind == "f":
        return math.nan
    info = np.iinfo(dtype)
    return float(info.max if kind == "u" else info.min)


def resolve_settings(
    name: str,
    header: RasterHeader,
    method: str,
    band: int,
    nodata_override: float | None,
    dtype: str | None,
    scale: tuple[float, float],
    error_threshold: float,
    same_crs: bool,
    engine: tuple[str, str] = ("gdal", ""),
) -> WarpSettings:
    dst_dtype = dtype or header.dtype
    if nodata_override is not None:
        check_nodata_fits(name, header.path, nodata_override, header.dtype, f"datasets.{name}.nodata")
        src_nodata = nodata_override
    elif header.nodata is not None:
        src_nodata = header.nodata
    elif np.dtype(header.dtype).kind == "f":
        # Undeclared NaN would poison average and sum; GDAL skips it once it is the nodata value.
        src_nodata = math.nan
    else:
        src_nodata = None
    if src_nodata is None:
        dst_nodata = default_nodata(dst_dtype)
    elif nodata_override is None and np.dtype(dst_dtype).kind == "f" and np.dtype(header.dtype).kind in "iu":
        # Integers made real (dtype: float32 on an int16 input): NaN, as for real inputs; the
        # integer's nodata (-32768) would be a number among numbers in a real mosaic.
        dst_nodata = math.nan
    else:
        dst_nodata = src_nodata
    check_nodata_fits(
        name,
        header.path,
        dst_nodata,
        dst_dtype,
        f"nodata of the output (set datasets.{name}.nodata or datasets.{name}.dtype)",
    )
    return WarpSettings(
        method=method,
        band=band,
        src_nodata=src_nodata,
        dst_nodata=dst_nodata,
        dst_dtype=dst_dtype,
        x_scale=scale[0],
        y_scale=scale[1],
        error_threshold=error_threshold,
        same_crs=same_crs,
        engine=engine[0],
        engine_reason=engine[1],
    )


def kernel_padding(settings: WarpSettings) -> int:
    """Source pixels to add around a chunk's footprint so that every kernel sees all its inputs.

    GDAL widens kernels by 1/scale when downsampling (radius 2 for cubic); padding beyond what GDAL
    itself pads also keeps its window-dependent weighting (see README: sum) out of interior chunks.
    """
    shrink = min(settings.x_scale, settings.y_scale, 1.0)
    return int(math.ceil(3.0 / shrink)) + 2


# Source pixels that GDAL's resampling kernels reach at scale 1 (GWKGetFilterRadius); the area
# methods (average, mode, ...) take the pixels under the target pixel only.
FILTER_RADIUS = {"nearest": 0, "bilinear": 1, "cubic": 2}


def kernel_reach(settings: WarpSettings) -> float:
    """How far beyond a raster's edge, in its pixels, data can still land: the kernel's radius
    (widened by 1/scale when downsampling, as GDAL does) plus one pixel for rounding."""
    shrink = min(settings.x_scale, settings.y_scale, 1.0)
    return (FILTER_RADIUS.get(settings.method, 0) + 1) / shrink


# Methods whose output pixel is a reduction of the source pixels under it (GDAL's
# GWKAverageOrMode): their edges need the raster padded with nodata (engines.chunks.pad_width).
AREA_METHODS = {"average", "sum", "min", "max", "mode", "med"}

# Methods whose integer results are rounded from a computed real value (engines.warp.stable_round).
COMPUTED_METHODS = ("bilinear", "cubic", "average", "sum")


def rounded_from_float64(settings: "WarpSettings") -> bool:
    """GDAL's engine warps this dataset into float64 and the workflow rounds (engines.warp)."""
    return settings.method in COMPUTED_METHODS and np.dtype(settings.dst_dtype).kind in "iu"
