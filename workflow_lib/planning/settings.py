"""How one dataset is warped: fixed once per dataset so that every tile agrees."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from workflow_lib.domain import Engine, Method
from workflow_lib.planning.engine import EngineChoice
from workflow_lib.sources.header import RasterHeader, check_nodata_fits, json_number, number_from_json


@dataclass(frozen=True)
class WarpSettings:
    method: Method
    band: int
    src_nodata: float | None  # value GDAL treats as missing in the input (NaN allowed)
    dst_nodata: float  # value written where there is no data
    dst_dtype: str
    x_scale: float  # GDAL warp option XSCALE: target pixels per source pixel
    y_scale: float  # GDAL warp option YSCALE
    error_threshold: float  # GDAL's approximate transformer's error across CRSs, in pixels
    same_crs: bool  # input and target share one CRS: the transformation is affine
    engine: Engine = Engine.WARP  # planning.engine.choose_engine decides it
    engine_reason: str = ""  # why, in words
    # Several bands (config "bands"): each resampled as ``band`` is, into one multi-band tile;
    # empty for one band.
    bands: tuple[int, ...] = ()
    # Method fractions: the classes, one output band each, in the config's order.
    classes: tuple[float, ...] = ()
    # The conservative engine's: a band with the share of each target pixel covered by valid
    # input pixels (after the value or class bands); values nodata where that share is below
    # min_coverage; points per input pixel edge (straight segments between them, planning.footprint
    # .edge_points).
    coverage: bool = False
    min_coverage: float = 0.0
    edge_points: int = 1

    def __post_init__(self) -> None:
        # The values, also when a caller (dataclasses.replace, a test) passes their names.
        object.__setattr__(self, "method", Method(self.method))
        object.__setattr__(self, "engine", Engine(self.engine))

    def describe(self) -> str:
        """The settings as a person reads them (the register job's log): only what is set."""
        parts = [f"method {self.method.value}", f"band {self.band}" if not self.bands else
                 f"bands {', '.join(map(str, self.bands))}",
                 f"nodata {_value(self.src_nodata)} -> {_value(self.dst_nodata)}", self.dst_dtype,
                 f"{1 / self.x_scale:.6g} x {1 / self.y_scale:.6g} input pixels per target pixel"
                 if self.x_scale and self.y_scale else "",
                 "same CRS" if self.same_crs else f"across CRSs (error threshold {self.error_threshold:g} px)"]
        if self.classes:
            parts.append(f"classes {', '.join(f'{c:g}' for c in self.classes)}")
        if self.coverage:
            parts.append(f"coverage band, min_coverage {self.min_coverage:g}")
        return ", ".join(p for p in parts if p)

    @property
    def output_bands(self) -> int:
        """Bands of a tile made from one input band: a value, or one share per class; then the
        coverage."""
        return (len(self.classes) if self.method is Method.FRACTIONS else 1) + int(self.coverage)

    def to_dict(self) -> dict:
        data = asdict(self)
        # Left out when they have their defaults: tiles made before they existed keep their digest
        # (engines.batch).
        for key, default in _OPTIONAL.items():
            if data[key] == default:
                del data[key]
        if self.bands:
            data["bands"] = list(self.bands)
        if self.classes:
            data["classes"] = list(self.classes)
        data["src_nodata"] = json_number(self.src_nodata)
        data["dst_nodata"] = json_number(self.dst_nodata)
        data["method"] = self.method.value
        data["engine"] = self.engine.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "WarpSettings":
        data = dict(data)
        data["src_nodata"] = number_from_json(data["src_nodata"])
        data["dst_nodata"] = number_from_json(data["dst_nodata"])
        data["bands"] = tuple(data.get("bands", ()))
        data["classes"] = tuple(data.get("classes", ()))
        return cls(**data)


_OPTIONAL = {"bands": (), "classes": (), "coverage": False, "min_coverage": 0.0, "edge_points": 1}


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
    method: Method,
    band: int,
    nodata_override: float | None,
    dtype: str | None,
    scale: tuple[float, float],
    error_threshold: float,
    same_crs: bool,
    engine: EngineChoice = EngineChoice(Engine.WARP, ""),
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
        method=Method(method),
        band=band,
        src_nodata=src_nodata,
        dst_nodata=dst_nodata,
        dst_dtype=dst_dtype,
        x_scale=scale[0],
        y_scale=scale[1],
        error_threshold=error_threshold,
        same_crs=same_crs,
        engine=engine.engine,
        engine_reason=engine.reason,
    )


def kernel_padding(settings: WarpSettings) -> int:
    """Source pixels to add around a chunk's footprint so that every kernel sees all its inputs.

    GDAL widens kernels by 1/scale when downsampling (radius 2 for cubic); padding beyond what GDAL
    itself pads also keeps its window-dependent weighting (see docs/accuracy.md: sum) out of interior chunks.
    """
    shrink = min(settings.x_scale, settings.y_scale, 1.0)
    return int(math.ceil(3.0 / shrink)) + 2


def kernel_reach(settings: WarpSettings) -> float:
    """How far beyond a raster's edge, in its pixels, data can still land: the kernel's radius
    (widened by 1/scale when downsampling, as GDAL does) plus one pixel for rounding."""
    shrink = min(settings.x_scale, settings.y_scale, 1.0)
    return (settings.method.kernel_radius + 1) / shrink


def rounded_from_float64(settings: WarpSettings) -> bool:
    """GDAL's engine warps this dataset into float64 and the workflow rounds (engines.warp): a
    computed value (Method.is_computed) into an integer type."""
    return settings.method.is_computed and np.dtype(settings.dst_dtype).kind in "iu"


def _value(v: float | None) -> str:
    return "none" if v is None else f"{v:g}"
