"""Test helpers: synthetic rasters, the independent GDAL reference, comparisons, and running the
workflow (Snakemake in a temporary folder) with what its results are checked by.

The reference is GDAL itself on the whole image: the full raster read at once (overviews off) and
warped in one ``rasterio.warp.reproject`` call onto the same grid. Nothing of workflow_lib's
chunking, windows or padding is used to make it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import rasterio
import yaml
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA = os.environ.get("REAL_DATA_DIR", os.path.join(os.path.dirname(REPO), "shared", "data", "real"))


def write_raster(path, array, crs, transform, nodata=None, **extra) -> str:
    profile = {
        "driver": "GTiff", "width": array.shape[1], "height": array.shape[0], "count": 1,
        "dtype": str(array.dtype), "crs": crs, "transform": transform, "nodata": nodata,
        "tiled": True, "blockxsize": 128, "blockysize": 128, "compress": "deflate", **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
    return str(path)


def smooth_field(height, width, seed=0, dtype="float32", scale=100.0):
    """A smooth surface with some noise: realistic enough for bilinear and cubic to matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype("float64")
    z = 50 * np.sin(x / 17.0) * np.cos(y / 23.0) + 30 * np.sin((x + 2 * y) / 41.0) + rng.normal(0, 3, (height, width))
    return (z + scale).astype(dtype)


def classes_field(height, width, seed=0, n=6, dtype="uint8"):
    """Patchy classes 1..n with many ties in 2x2 / 4x4 blocks (exercises mode's tie rule)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, n + 1, size=(height // 3 + 1, width // 3 + 1))
    field = np.kron(coarse, np.ones((3, 3), dtype=int))[:height, :width]
    speckle = rng.random((height, width)) < 0.15
    field[speckle] = rng.integers(1, n + 1, size=int(speckle.sum()))
    return field.astype(dtype)


@dataclass
class Reference:
    data: np.ndarray
    nodata: float


def reference_warp(
    path: str,
    band: int,
    dst_transform: Affine,
    width: int,
    height: int,
    dst_crs,
    method: str,
    dst_dtype: str,
    src_nodata,
    dst_nodata,
    warp_options: dict | None = None,
    error_threshold: float = 0.125,
    pad: int = 0,
) -> Reference:
    """GDAL on the whole image: the full raster warped onto the full grid in one GDAL operation.

    ``rasterio.warp.reproject`` where it can (one CRS, or rasterio 1.4's fixed 0.125 px transformer
    error), else a WarpedVRT of the whole raster with the transformer error asked for. ``pad``:
    the raster is first surrounded by that many pixels of nodata (a validity mask), which is where
    GDAL's area methods give the area-weighted result at the raster's edges (docs/accuracy.md).
    """
    with rasterio.open(path, OVERVIEW_LEVEL="NONE") as src:
        data = src.read(band)
        src_transform, src_crs = src.transform, src.crs
    if data.dtype.kind == "f" and src_nodata is not None and not math.isnan(src_nodata):
        data[np.isnan(data)] = src_nodata  # the documented meaning of NaN beside a nodata value
    valid = None
    if pad:
        valid = np.zeros((data.shape[0] + 2 * pad, data.shape[1] + 2 * pad), bool)
        inside = np.ones(data.shape, bool)
        if src_nodata is not None:
            inside = ~np.isnan(data) if math.isnan(src_nodata) else data != src_nodata
        elif data.dtype.kind == "f":
            inside = ~np.isnan(data)
        valid[pad:-pad, pad:-pad] = inside
        padded = np.zeros(valid.shape, data.dtype)
        padded[pad:-pad, pad:-pad] = data
        data, src_transform, src_nodata = padded, src_transform @ Affine.translation(-pad, -pad), None
    options = warp_options or {}
    if valid is None and (src_crs == dst_crs or error_threshold == 0.125):
        out = np.full((height, width), dst_nodata, dtype=dst_dtype)
        reproject(
            data, out, src_transform=src_transform, src_crs=src_crs, src_nodata=src_nodata,
            dst_transform=dst_transform, dst_crs=dst_crs, dst_nodata=dst_nodata,
            resampling=Resampling[method], init_dest_nodata=True,
            # Large enough that GDAL warps the whole image in one piece.
            warp_mem_limit=2048, **options,
        )
        return Reference(out, dst_nodata)
    with warnings.catch_warnings(), rasterio.open("/vsimem/reference", "w", driver="MEM", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=data.dtype, crs=src_crs, transform=src_transform, nodata=src_nodata) as mem:
        warnings.filterwarnings("ignore", message="Source dataset should be opened in read-only mode")
        mem.write(data, 1)
        if valid is not None:
            # The padding as GDAL's mask band (a NumPy masked array would become an alpha band,
            # by which GDAL weights sums).
            mem.write_mask(valid)
        if src_crs == dst_crs or error_threshold == 0.125:
            out = np.full((height, width), dst_nodata, dtype=dst_dtype)
            reproject(rasterio.band(mem, 1), out, dst_transform=dst_transform, dst_crs=dst_crs, dst_nodata=dst_nodata,
                      resampling=Resampling[method], init_dest_nodata=True, warp_mem_limit=2048, **options)
            return Reference(out, dst_nodata)
        with WarpedVRT(mem, crs=dst_crs, transform=dst_transform, width=width, height=height,
                       src_nodata=src_nodata, nodata=dst_nodata, dtype=dst_dtype, resampling=Resampling[method],
                       tolerance=max(error_threshold, 1e-6), warp_mem_limit=2048, **options) as vrt:
            return Reference(vrt.read(1), dst_nodata)


def valid_mask(a: np.ndarray, nodata) -> np.ndarray:
    if nodata is not None and isinstance(nodata, float) and math.isnan(nodata):
        return ~np.isnan(a)
    return a != nodata


@dataclass
class Comparison:
    max_abs_diff: float
    compared: int  # pixels valid in both
    nodata_mismatch: int  # pixels valid in one only
    differing: int  # pixels valid in both whose values differ at all

    def row(self, label: str) -> str:
        return (f"{label:<52} max|diff| {self.max_abs_diff:<12.6g} compared {self.compared:>9,d} "
                f"differing {self.differing:>7,d} nodata-mismatch {self.nodata_mismatch}")


def compare(result: np.ndarray, reference: np.ndarray, nodata) -> Comparison:
    a, b = valid_mask(result, nodata), valid_mask(reference, nodata)
    both = a & b
    diff = np.abs(result[both].astype("float64") - reference[both].astype("float64"))
    return Comparison(
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        compared=int(both.sum()),
        nodata_mismatch=int((a != b).sum()),
        differing=int((diff > 0).sum()),
    )


def run_tiles_and_mosaics(config: dict, workdir, mem_mb: int = 400, max_chunk_bytes: int | None = None):
    """The workflow's library path without Snakemake: plan, every tile, then the real mosaic code.

    Returns the plan and {dataset: mosaic path}.
    """
    from workflow_lib.config import validate_config
    from workflow_lib.mosaics.mosaic import write_mosaic
    from workflow_lib.planning.plan import build_plan
    from workflow_lib.engines.compose import make_tile
    from workflow_lib.engines.resample import resample_tile

    plan = build_plan(validate_config(config))
    mosaics = {}
    for name, dataset in plan.datasets.items():
        tiles = []
        for tid in dataset.tiles:
            out = os.path.join(str(workdir), "tiles", name, f"{tid}.tif")
            if dataset.parts or dataset.settings.bands:  # pieces (engines.compose), as a batch job makes them
                make_tile(dataset, plan.grid, plan.grid.tile(tid), out, mem_mb, max_chunk_bytes=max_chunk_bytes)
            else:
                resample_tile(name, dataset.header, dataset.settings, plan.grid, plan.grid.tile(tid), out,
                              mem_mb=mem_mb, max_chunk_bytes=max_chunk_bytes)
            tiles.append(out)
        mosaics[name] = os.path.join(str(workdir), "mosaics", f"{name}.tif")
        write_mosaic(name, dataset.settings, plan.grid, tiles, mosaics[name], mem_mb=mem_mb,
                     band_names=dataset.band_names)
    return plan, mosaics


AREA_METHODS = {"average", "sum", "min", "max", "mode", "med"}


def reference_for(plan, name: str, fixed_scale: bool = False, padded: bool | None = None) -> Reference:
    """The whole-image GDAL warp of one planned dataset onto the plan's full grid.

    ``fixed_scale``: GDAL is given the dataset's XSCALE/YSCALE instead of deriving them itself
    (they agree when the grid is the dataset's own union extent; elsewhere, see docs/accuracy.md).
    ``padded`` (default: for the area methods): the raster is surrounded by nodata, so that GDAL's
    average and sum are area-weighted at its edges and no target pixel outside it gets a value.
    """
    d, g = plan.datasets[name], plan.grid
    s = d.settings
    options = {"XSCALE": repr(s.x_scale), "YSCALE": repr(s.y_scale)} if fixed_scale else {}
    if padded is None:
        padded = s.method in AREA_METHODS
    pad = int(math.ceil(4.0 / min(s.x_scale, s.y_scale, 1.0))) + 4 if padded else 0
    return reference_warp(d.header.path, s.band, g.transform, g.width, g.height, g.crs, s.method, s.dst_dtype,
                          s.src_nodata, s.dst_nodata, options, error_threshold=s.error_threshold, pad=pad)


def block_reference(data: np.ndarray, valid: np.ndarray | None, kx: int, ky: int, method: str, dst_dtype: str,
                    dst_nodata: float) -> np.ndarray:
    """An independent NumPy reference for block reductions, written for clarity, not speed: every
    ky x kx block is gathered on its own axis and reduced with NumPy's own functions. ``average`` is
    the exact mean (sum / count), which GDAL's running mean (and the engine) reproduce to within
    one unit in the last place: integer outputs may differ only where the exact mean is a tie (x.5).
    """
    h, w = data.shape[0] // ky, data.shape[1] // kx
    values = data[: h * ky, : w * kx].astype("float64").reshape(h, ky, w, kx).transpose(0, 2, 1, 3).reshape(h, w, -1)
    ok = np.ones(values.shape, bool) if valid is None else (
        valid[: h * ky, : w * kx].reshape(h, ky, w, kx).transpose(0, 2, 1, 3).reshape(h, w, -1))
    n = ok.sum(axis=-1)
    found = n > 0
    nudge = True
    if method == "nearest" or kx * ky == 1:
        centre = (ky // 2) * kx + kx // 2
        result, found, nudge = values[..., centre], ok[..., centre], False
    elif method in ("average", "sum"):
        total = np.where(ok, values, 0.0).sum(axis=-1)
        result = total if method == "sum" else np.divide(total, n, out=np.zeros(n.shape), where=found)
    elif method in ("min", "max"):
        result = (np.where(ok, values, np.inf).min(axis=-1) if method == "min"
                  else np.where(ok, values, -np.inf).max(axis=-1))
    elif method == "med":
        ordered = np.sort(np.where(ok, values, np.inf), axis=-1)
        result = np.take_along_axis(ordered, np.maximum(n - 1, 0)[..., None] // 2, axis=-1)[..., 0]
    elif method == "mode":
        # For every position: how many valid positions hold its value, and whether one comes later.
        same = (values[..., :, None] == values[..., None, :]) & ok[..., :, None] & ok[..., None, :]
        counts = same.sum(axis=-1)
        later = np.triu(np.ones((values.shape[-1],) * 2, bool), 1)
        last = ok & ~(same & later).any(axis=-1)
        # The most frequent value wins; among equals, the one whose last occurrence comes first.
        score = np.where(last, counts * values.shape[-1] + (values.shape[-1] - 1 - np.arange(values.shape[-1])), -1)
        result = np.take_along_axis(values, score.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    else:
        raise ValueError(method)
    dtype = np.dtype(dst_dtype)
    if dtype.kind == "f":
        out = result.astype(dtype)
    else:
        info = np.iinfo(dtype)
        out = np.clip(np.floor(np.where(found, result, 0.0) + 0.5), info.min, info.max).astype(dtype)
        if nudge:
            nd = dtype.type(dst_nodata)
            out[out == nd] = nd + 1 if nd == info.min else nd - 1
    out[~found] = dst_nodata
    return out


def area_reference(data: np.ndarray, valid: np.ndarray, src: Affine, dst: Affine, shape: tuple[int, int],
                   method: str) -> np.ndarray:
    """An independent NumPy reference for ``average`` and ``sum`` within one CRS (north-up grids):
    each target pixel is the area-weighted mean (sum) of the valid source pixels under it, with
    weights the overlap of pixel intervals along x times along y. NaN where no valid pixel is under
    it; float64, before any cast to the output type."""
    def weights(n_dst, dst_origin, dst_step, n_src, src_origin, src_step):
        d0 = dst_origin + dst_step * np.arange(n_dst)
        s0 = src_origin + src_step * np.arange(n_src)
        lo = np.maximum(np.minimum(d0, d0 + dst_step)[:, None], np.minimum(s0, s0 + src_step)[None, :])
        hi = np.minimum(np.maximum(d0, d0 + dst_step)[:, None], np.maximum(s0, s0 + src_step)[None, :])
        return np.clip(hi - lo, 0, None) / abs(src_step)  # in source pixels

    wx = weights(shape[1], dst.c, dst.a, data.shape[1], src.c, src.a)
    wy = weights(shape[0], dst.f, dst.e, data.shape[0], src.f, src.e)
    values = np.where(valid, data.astype("float64"), 0.0)
    total = wy @ values @ wx.T
    weight = wy @ valid.astype("float64") @ wx.T
    with np.errstate(invalid="ignore", divide="ignore"):
        result = total if method == "sum" else total / weight
    return np.where(weight > 0, result, np.nan)


def read_band(path: str) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def window_reference(plan, name: str) -> np.ndarray:
    """An independent reference for min, max, mode and med within one CRS on any north-up grid:
    for every target pixel, the input pixels whose extent overlaps it by more than 1e-9 pixel,
    found in exact rational arithmetic from the two geotransforms, reduced pixel by pixel in
    Python with the block rules (row-major order, lower median, mode ties to the value whose last
    occurrence comes first)."""
    from fractions import Fraction

    d, g = plan.datasets[name], plan.grid
    s = d.settings
    with rasterio.open(d.header.path) as src:
        data = src.read(s.band)
        t = src.transform
    ok = np.ones(data.shape, bool)
    if s.src_nodata is not None:
        ok = ~np.isnan(data) if math.isnan(s.src_nodata) else data != s.src_nodata
    if data.dtype.kind == "f":
        ok &= ~np.isnan(data)
    tol = Fraction(1, 10**9)

    def ranges(src_origin, src_step, dst_origin, dst_step, n, size):
        out = []
        for i in range(n):
            a = (Fraction(dst_origin) + i * Fraction(dst_step) - Fraction(src_origin)) / Fraction(src_step)
            b = (Fraction(dst_origin) + (i + 1) * Fraction(dst_step) - Fraction(src_origin)) / Fraction(src_step)
            lo, hi = min(a, b), max(a, b)
            start, end = math.floor(lo + tol), math.ceil(hi - tol)
            out.append((max(start, 0), min(end, size)))
        return out

    cols = ranges(t.c, t.a, g.transform.c, g.transform.a, g.width, data.shape[1])
    rows = ranges(t.f, t.e, g.transform.f, g.transform.e, g.height, data.shape[0])
    result = np.full((g.height, g.width), s.dst_nodata, dtype=s.dst_dtype)
    for i, (r0, r1) in enumerate(rows):
        if r1 <= r0:
            continue
        for j, (c0, c1) in enumerate(cols):
            if c1 <= c0:
                continue
            values = data[r0:r1, c0:c1][ok[r0:r1, c0:c1]].astype("float64")
            if not values.size:
                continue
            if s.method == "min":
                v = values.min()
            elif s.method == "max":
                v = values.max()
            elif s.method == "med":
                v = np.sort(values)[(values.size - 1) // 2]
            else:
                counts, last = {}, {}
                for k, x in enumerate(values.tolist()):
                    counts[x] = counts.get(x, 0) + 1
                    last[x] = k
                v = min(counts, key=lambda x: (-counts[x], last[x]))
            if np.dtype(s.dst_dtype).kind != "f":
                info = np.iinfo(s.dst_dtype)
                v = min(max(math.floor(v + 0.5), info.min), info.max)
                if v == s.dst_nodata:
                    v = v + 1 if v == info.min else v - 1
            result[i, j] = v
    return result


# ---------------------------------------------------------------------------- the workflow itself

UTM = Affine(10, 0, 500000, 0, -10, 5200000)


def snakemake(workdir, *args, check=True, **options):
    """``options``: more of subprocess.run's (preexec_fn, to set limits on Snakemake and its jobs)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", os.path.join(REPO, "Snakefile"),
           "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **options)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start(workdir, *args, env=None):
    """Start snakemake in its own process group (as a terminal gives it: a signal sent to the group
    reaches snakemake and all its jobs), its output going to a file: an unread pipe would fill up
    and block snakemake while a test watches it."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", os.path.join(REPO, "Snakefile"),
           "--directory", str(workdir), *args]
    out = open(os.path.join(workdir, "snakemake.out"), "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env)
    proc.output_path = os.path.join(workdir, "snakemake.out")
    return proc


def finish(proc, timeout=600) -> str:
    proc.wait(timeout=timeout)
    with open(proc.output_path) as f:
        return f.read()


def write_config(workdir, config):
    os.makedirs(os.path.join(workdir, "config"), exist_ok=True)
    with open(os.path.join(workdir, "config", "config.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)


def synthetic_config(folder):
    values = smooth_field(360, 400)
    values[50:80, 100:180] = -9999
    values[200:210, 20:60] = np.nan
    classes = classes_field(300, 320)
    classes[:30, :40] = 0
    lonlat = Affine(0.0005, 0, 8.995, 0, -0.0005, 46.952)
    temperature = (smooth_field(80, 90, seed=3) * 10).astype("int16")
    return {
        "target": {"crs": "EPSG:32632", "resolution": 40, "origin": [0, 0]},
        "tile_size": 48,
        "warp": {"error_threshold": 0},
        "datasets": {
            "dem": {"path": write_raster(folder / "dem.tif", values, "EPSG:32632", UTM, -9999.0),
                    "method": "average"},
            "landcover": {"path": write_raster(folder / "landcover.tif", classes, "EPSG:32632",
                                               Affine(10, 0, 500400, 0, -10, 5199600), 0),
                          "method": "mode"},
            "temperature": {"path": write_raster(folder / "temperature.tif", temperature, "EPSG:4326", lonlat,
                                                 -32768),
                            "method": "bilinear", "dtype": "float32"},
        },
    }


def digest(path):
    """Pixels and georeferencing of a raster, as one hash."""
    with rasterio.open(path) as src:
        h = hashlib.sha256()
        h.update(repr((src.crs.to_wkt(), tuple(src.transform), src.shape, src.count, src.dtypes, src.nodatavals,
                       src.descriptions)).encode())
        for i in range(1, src.count + 1):
            h.update(src.read(i).tobytes())
        return h.hexdigest()


def zarr_digest(store) -> dict:
    """Every array of a Zarr store (its metadata and values), by path, its overview levels' too:
    what a reader gets."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    out = {}
    for name, array in sorted((path, node) for path, node in group.members(max_depth=None)
                              if isinstance(node, zarr.Array)):
        values = array[...]
        # Not the spec's digest: it names the input files, whose folder differs from run to run.
        attrs = {k: v for k, v in array.attrs.items() if k != "onegrid:spec"}
        h = hashlib.sha256(repr((array.shape, str(array.dtype), array.fill_value, attrs)).encode())
        h.update(np.ascontiguousarray(values).tobytes() if values.dtype.kind != "T" else repr(list(values)).encode())
        out[f"stack.zarr/{name}"] = h.hexdigest()
    return out


def results_digests(workdir):
    root = workdir / "results"
    names = sorted(os.listdir(root / "mosaics"))
    zarr_part = zarr_digest(root / "stack.zarr") if (root / "stack.zarr").exists() else {}
    table_part = {"table": table_digest(root / "table")} if (root / "table").exists() else {}
    return {**{f"mosaics/{n}": digest(root / "mosaics" / n) for n in names}, "stack.tif": digest(root / "stack.tif"),
            **zarr_part, **table_part}


def table_digest(folder):
    """The per-cell table's rows (in row, col order, whatever the files) and schema, as one hash."""
    import pyarrow.dataset as pads

    table = pads.dataset(str(folder), format="parquet").to_table().sort_by([("row", "ascending"), ("col", "ascending")])
    h = hashlib.sha256(str(table.schema).encode())
    for column in table.columns:
        h.update(np.asarray(column.is_valid()).tobytes())
        h.update(np.asarray(column.fill_null(0)).tobytes())
    return h.hexdigest()


def tiles(workdir):
    root = workdir / "results" / "tiles"
    if not root.exists():
        return {}
    return {f"{d}/{f}": os.stat(root / d / f).st_mtime_ns for d in os.listdir(root)
            for f in os.listdir(root / d) if f.endswith(".tif") and not f.startswith(".tmp-")}


def temporaries(workdir):
    """What writers left under temporary names: ours (.tmp-*) and zarr-python's (*.partial)."""
    return [os.path.join(d, f) for d, _, files in os.walk(workdir / "results") for f in files
            if f.startswith(".tmp-") or f.endswith(".partial")]


STALLING_VRT = """<VRTDataset rasterXSize="512" rasterYSize="512">
  <SRS>EPSG:32632</SRS>
  <GeoTransform>500000, 10, 0, 5200000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="Float32" band="1">
    <NoDataValue>-9999</NoDataValue>
    <SimpleSource>
      <SourceFilename relativeToVRT="1">pipe.tif</SourceFilename>
      <SourceBand>1</SourceBand>
      <SourceProperties RasterXSize="512" RasterYSize="512" DataType="Float32" BlockXSize="256" BlockYSize="256"/>
      <SrcRect xOff="0" yOff="0" xSize="512" ySize="512"/>
      <DstRect xOff="0" yOff="0" xSize="512" ySize="512"/>
    </SimpleSource>
  </VRTRasterBand>
</VRTDataset>
"""


def interruptible_config(folder, **overrides):
    """The synthetic config in many short tiles, in batches of 6 (every output on): signals and
    the controller's verbs land in the middle of batches."""
    cfg = synthetic_config(folder)
    cfg["tile_size"] = 16
    cfg["tiles_per_job"] = 6
    # Every output, the per-cell table too: the interruption matrix checks each is whole after a resume.
    cfg["output"] = {"table": "parquet"}
    cfg.update(overrides)
    return cfg


# The controller (onegrid run ...) starts Snakemake with these.
SNAKEMAKE_ARGS = ["--snakefile", os.path.join(REPO, "Snakefile"), "--cores", "2", "--resources", "mem_mb=2000"]


def control(workdir, *args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "workflow_lib", *args], cwd=workdir, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"workflow_lib {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_info(workdir):
    with open(workdir / ".workflow" / "run.json") as f:
        return json.load(f)


def alive(workdir):
    """Snakemake's process runs (an exited one may linger as a zombie until its parent reaps it)."""
    from workflow_lib.controller.runfile import read_run

    return read_run(str(workdir)).alive()


def wait_until(condition, timeout=300, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_end(workdir, timeout=600):
    wait_until(lambda: not alive(workdir), timeout, "the run to end")


def console(workdir):
    with open(workdir / "logs" / "run" / "console.log") as f:
        return f.read()


@dataclass
class UninterruptedRun:
    """The run that every interrupted, paused, frozen or stopped run must end up equal to."""

    workdir: object
    digests: dict  # results_digests
    tiles: set  # tile files, by dataset/name
    started: subprocess.CompletedProcess  # `run --detach` that started it
    second: subprocess.CompletedProcess  # a second `run` tried while it was alive
    info: dict  # its run file while it was alive


def uninterrupted_run(workdir) -> UninterruptedRun:
    """interruptible_config run whole in ``workdir``, started detached by the controller; a second
    `run` is tried while it is alive (the controller must refuse it)."""
    write_config(workdir, interruptible_config(workdir))
    started = control(workdir, "run", "--detach", "--", *SNAKEMAKE_ARGS)
    second = control(workdir, "run", "--", *SNAKEMAKE_ARGS, check=False)
    info = run_info(workdir)
    wait_for_end(workdir)
    return UninterruptedRun(workdir, results_digests(workdir), set(tiles(workdir)), started, second, info)


# ---------------------------------------------------------------------------- the area-weighted truth

@dataclass
class FootprintReference:
    """What the area-weighted methods give, per target pixel, from exact footprints (below)."""

    average: np.ndarray  # NaN where no valid pixel
    sum: np.ndarray
    mode: np.ndarray  # the class covering the largest area
    areas: dict  # class -> the area it covers in each target pixel (a share of the pixel: fractions)
    coverage: np.ndarray  # share of each target pixel's area covered by valid pixels
    mode_tied: np.ndarray  # where the largest areas of two classes are equal to 1e-9: no single answer


def footprint_reference(data, valid, src_transform, src_crs, dst_transform, dst_crs, shape, classes=False,
                        points_per_edge=16) -> FootprintReference:
    """The truth for the area methods, independent of the workflow's code: each valid source pixel's
    outline (``points_per_edge`` points per edge, each moved by PROJ through rasterio.warp.transform)
    is a shapely polygon in target pixel coordinates, intersected with every target pixel's square;
    the weight of a source pixel in a target pixel is the area of their intersection (in the target
    CRS: target pixels are squares of one area). Average: the weighted mean; sum: each pixel's value
    shared by the fraction of its outline's area in each target pixel; with ``classes``, the area of
    each value in each target pixel, and the value with the largest (mode)."""
    import shapely
    from rasterio.warp import transform as move

    height, width = shape
    rows, cols = np.nonzero(valid)
    m = points_per_edge
    t = np.arange(m) / m
    ring_c = np.concatenate([t, np.ones(m), 1 - t, np.zeros(m)])
    ring_r = np.concatenate([np.zeros(m), t, np.ones(m), 1 - t])
    pc = cols[:, None] + ring_c[None, :]
    pr = rows[:, None] + ring_r[None, :]
    x, y = src_transform @ (pc.ravel(), pr.ravel())
    if not dst_crs == src_crs:
        x, y = move(src_crs, dst_crs, x, y)
    tx, ty = ~dst_transform @ (np.asarray(x, float), np.asarray(y, float))
    tx, ty = np.asarray(tx).reshape(pc.shape), np.asarray(ty).reshape(pc.shape)
    period = 360.0 / abs(dst_transform.a) if dst_crs.is_geographic else 0.0
    if period:
        tx = tx - period * np.round((tx - tx[:, :1]) / period)
    weighted, summed, cover = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    areas, pieces = {}, []  # pieces: (target pixel, class, area) of each piece
    values = data[rows, cols].astype(np.float64)
    ok = np.isfinite(tx).all(axis=1) & np.isfinite(ty).all(axis=1)
    polygons = shapely.polygons(np.stack([np.where(ok[:, None], tx, 0), np.where(ok[:, None], ty, 0)], axis=-1))
    whole = shapely.area(polygons)

    def add(r, c, a, k):
        np.add.at(cover, (r, c), a)
        np.add.at(weighted, (r, c), a * values[k])
        np.add.at(summed, (r, c), values[k] * a / whole[k])
        if classes:
            pieces.append((r * width + c, values[k], a))

    # Outlines inside one target pixel (and no whole turn away from another) give it all their
    # area: taken together, without clipping.
    c_lo, c_hi = np.floor(tx.min(axis=1)), np.ceil(tx.max(axis=1))
    r_lo, r_hi = np.floor(ty.min(axis=1)), np.ceil(ty.max(axis=1))
    single = ok & (whole > 0) & (np.maximum(c_hi - c_lo, 1) == 1) & (np.maximum(r_hi - r_lo, 1) == 1) & (
        c_lo >= 0) & (c_lo < width) & (r_lo >= 0) & (r_lo < height)
    if period:
        single &= (c_hi - period <= 0) & (c_lo + period >= width)
    k = np.flatnonzero(single)
    add(r_lo[k].astype(int), c_lo[k].astype(int), whole[k], k)
    # Outlines over a few target pixels: every (outline, target pixel of its bounding box) pair
    # intersected in one vectorised call.
    span_c, span_r = np.maximum(c_hi - c_lo, 1), np.maximum(r_hi - r_lo, 1)
    few = ok & ~single & (whole > 0) & (span_c * span_r <= 16) & (period == 0)
    if few.any():
        ks, rs, cs = [], [], []
        for dr in range(4):
            for dc in range(4):
                pick = few & (dr < span_r) & (dc < span_c)
                ks.append(np.flatnonzero(pick))
                rs.append((r_lo[pick] + dr).astype(int))
                cs.append((c_lo[pick] + dc).astype(int))
        kk, rr, cc = np.concatenate(ks), np.concatenate(rs), np.concatenate(cs)
        inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        kk, rr, cc = kk[inside], rr[inside], cc[inside]
        area = shapely.area(shapely.intersection(polygons[kk], shapely.box(cc, rr, cc + 1, rr + 1)))
        hit = area > 0
        order = np.argsort(kk[hit], kind="stable")
        add(rr[hit][order], cc[hit][order], area[hit][order], kk[hit][order])
    for k in np.flatnonzero(ok & ~single & ~few & (whole > 0)):
        poly = polygons[k]
        for shift in ((-period, 0.0, period) if period else (0.0,)):
            c0, c1 = max(int(np.floor(tx[k].min() + shift)), 0), min(int(np.ceil(tx[k].max() + shift)), width)
            r0, r1 = max(int(np.floor(ty[k].min())), 0), min(int(np.ceil(ty[k].max())), height)
            if c0 >= c1 or r0 >= r1:
                continue
            cc, rr = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
            boxes = shapely.box(cc.ravel() - shift, rr.ravel(), cc.ravel() + 1 - shift, rr.ravel() + 1)
            area = shapely.area(shapely.intersection(poly, boxes))
            hit = area > 0
            add(rr.ravel()[hit], cc.ravel()[hit], area[hit], np.full(int(hit.sum()), k))
    found = cover > 0
    mode = np.full(shape, np.nan)
    tied = np.zeros(shape, bool)
    if classes and pieces:
        # The area of each class in each target pixel, sparse (a float raster has as many classes
        # as pixels): pieces grouped by (pixel, class) in their order, then per pixel the largest.
        cell = np.concatenate([p[0] for p in pieces])
        value = np.concatenate([p[1] for p in pieces])
        piece = np.concatenate([p[2] for p in pieces])
        order = np.lexsort((value, cell))
        cell, value, piece = cell[order], value[order], piece[order]
        starts = np.flatnonzero(np.r_[True, (cell[1:] != cell[:-1]) | (value[1:] != value[:-1])])
        g_cell, g_value, g_area = cell[starts], value[starts], np.add.reduceat(piece, starts)
        keys = np.unique(g_value)
        if keys.size <= 256:
            for v in keys:
                pick = g_value == v
                areas[float(v)] = np.zeros(shape)
                areas[float(v)].ravel()[g_cell[pick]] = g_area[pick]
        rank = np.lexsort((g_value, -g_area, g_cell))  # per pixel: largest area first, then smallest class
        g_cell, g_value, g_area = g_cell[rank], g_value[rank], g_area[rank]
        first = np.flatnonzero(np.r_[True, g_cell[1:] != g_cell[:-1]])
        mode.ravel()[g_cell[first]] = g_value[first]
        has_second = np.r_[first[1:], g_cell.size] - first > 1
        best, second = g_area[first[has_second]], g_area[first[has_second] + 1]
        tied.ravel()[g_cell[first[has_second]]] = best - second <= 1e-9 * np.maximum(best, 1e-300)
        mode[~found] = np.nan
        tied &= found
    return FootprintReference(np.where(found, weighted / np.where(found, cover, 1), np.nan),
                              np.where(found, summed, np.nan), mode, areas, cover, tied)


def refused_batch(dataset, grid, tiles, out: str) -> str:
    """Run a batch whose input changed after planning: every tile must fail, none be made, and no
    file be left in ``out``. Returns the (one) message of the failures."""
    from workflow_lib.engines.batch import run_batch

    result = run_batch(dataset, grid, "b", tiles, out, mem_mb=400)
    assert sorted(result.failed) == sorted(tiles) and result.made == []
    assert not os.path.exists(out) or os.listdir(out) == []
    [message] = set(result.failed.values())
    return message


def level_reference(mosaic: str, factor: int, categorical: bool, base: int | None = None) -> np.ndarray:
    """An overview level by NumPy from the mosaic's full-resolution pixels, independently of the
    workflow's code: the mean of each factor x factor block's valid pixels (NaN where none), or
    for classes the pixel at the centre of each block (of its part inside the raster at the
    right and bottom edges); for a level made from the level ``base`` (coarser than the tiles'
    levels), the centre pixel of the centre base block. Returns (bands, rows, columns) in
    float64, NaN for nodata."""
    with rasterio.open(mosaic) as src:
        data = src.read().astype("float64")
        data[data == src.nodata] = np.nan
    bands, h, w = data.shape

    def centres(size, f):
        return [i + min(f, size - i) // 2 for i in range(0, size, f)]

    if categorical:
        if base:
            k = factor // base
            rows = [j * base + min(base, h - j * base) // 2 for j in centres(-(-h // base), k)]
            cols = [j * base + min(base, w - j * base) // 2 for j in centres(-(-w // base), k)]
        else:
            rows, cols = centres(h, factor), centres(w, factor)
        return data[:, rows][:, :, cols]
    padded = np.full((bands, -(-h // factor) * factor, -(-w // factor) * factor), np.nan)
    padded[:, :h, :w] = data
    blocks = padded.reshape(bands, padded.shape[1] // factor, factor, padded.shape[2] // factor, factor)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        return np.nanmean(blocks, axis=(2, 4))
