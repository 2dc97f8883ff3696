"""Deterministic synthetic inputs for the bundled example (and for tests).

Four realistic layers over the western Alps, each in another CRS, data type and nodata convention;
the elevation model is far larger than a tile. A fifth, global land cover with WorldCover's class
codes, is for the README's "Your own data" (the example's config does not use it). Written block
by block, never whole in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from workflow_lib.atomic import atomic_path


@dataclass(frozen=True)
class ExampleLayer:
    name: str
    crs: str
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None
    values: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x, y) of pixel centres -> values


def _terrain(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridges and valleys in metres, with a lake (nodata) in one valley."""
    u, v = x / 9000.0, y / 7000.0
    z = 1400 + 900 * np.sin(u) * np.cos(v) + 350 * np.sin(2.7 * u + 1.3 * v) + 120 * np.cos(7.1 * u - 5.3 * v)
    return z.astype("float32")


def _dem(x, y):
    z = _terrain(x, y)
    lake = ((x - 452000) / 6000) ** 2 + ((y - 5150000) / 3500) ** 2 < 1
    z[lake] = -9999
    return z


def _landcover(x, y):
    """Classes 1..7 from elevation-like bands; 0 (nodata) outside a surveyed region."""
    z = 1400 + 900 * np.sin(x / 11000.0) * np.cos(y / 8000.0) + 200 * np.sin(x / 2300.0 + y / 3100.0)
    classes = np.digitize(z, [700, 1000, 1300, 1600, 1900, 2200]).astype("uint8") + 1
    classes[((x - 4_205_000) / 70000) ** 2 + ((y - 2_610_000) / 62000) ** 2 > 1] = 0
    return classes


def _temperature(lon, lat):
    """Mean July temperature in hundredths of a degree, lapse rate against a pseudo-elevation."""
    z = 1400 + 900 * np.sin(lon * 7.3) * np.cos(lat * 9.1)
    t = 2600 - 0.65 * z - 60 * (lat - 45.5)
    return np.round(t).astype("int16")


def _rainfall(lon, lat):
    """Annual rainfall in mm, float32 with undeclared NaN where the gauge network has gaps."""
    r = 1200 + 500 * np.sin(lon * 11.0) + 300 * np.cos(lat * 13.0)
    r = r.astype("float32")
    r[(np.sin(lon * 40) * np.cos(lat * 35)) > 0.93] = np.nan
    return r


def _global_landcover(lon, lat):
    """ESA WorldCover's codes (10 trees, 20 shrubs, 30 grassland, 40 cropland, 50 built-up, 60 bare,
    70 snow and ice, 80 water) in patches of a few pixels, by latitude band; 0 (nodata) at sea."""
    z = np.sin(np.radians(lon) * 3.0) * np.cos(np.radians(lat) * 4.0) + 0.5 * np.sin(np.radians(lon + 2 * lat) * 11.0)
    codes = np.array([80, 10, 20, 30, 40, 50, 60], "uint8")[np.digitize(z, [-0.9, -0.3, 0.0, 0.3, 0.6, 0.9])]
    codes[np.abs(lat) > 70] = 70
    codes[np.sin(np.radians(lon) * 2.0 + 1.0) * np.cos(np.radians(lat) * 2.0) < -0.55] = 0
    return codes


LAYERS = [
    ExampleLayer("dem", "EPSG:32632", Affine(30, 0, 400000, 0, -30, 5220000), 4000, 4000, "float32", -9999.0, _dem),
    ExampleLayer("landcover", "EPSG:3035", Affine(100, 0, 4130000, 0, -100, 2680000), 1500, 1400, "uint8", 0.0,
                 _landcover),
    ExampleLayer("temperature", "EPSG:4326", Affine(0.01, 0, 7.5, 0, -0.01, 47.3), 200, 140, "int16", -32768.0,
                 _temperature),
    ExampleLayer("rainfall", "EPSG:4326", Affine(0.005, 0, 7.6, 0, -0.005, 47.2), 300, 220, "float32", None,
                 _rainfall),
    ExampleLayer("landcover_global", "EPSG:4326", Affine(0.1, 0, -180, 0, -0.1, 90), 3600, 1800, "uint8", 0.0,
                 _global_landcover),
]


def write_layer(layer: ExampleLayer, path: str, block: int = 512) -> None:
    profile = {
        "driver": "GTiff", "width": layer.width, "height": layer.height, "count": 1, "dtype": layer.dtype,
        "crs": layer.crs, "transform": layer.transform, "nodata": layer.nodata, "tiled": True,
        "blockxsize": block, "blockysize": block, "compress": "deflate",
        "predictor": 3 if np.dtype(layer.dtype).kind == "f" else 2,
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, layer.height, block):
            rows = min(block, layer.height - row)
            cols, rws = np.meshgrid(np.arange(layer.width) + 0.5, np.arange(row, row + rows) + 0.5)
            x, y = layer.transform @ (cols, rws)
            dst.write(layer.values(x, y), 1, window=Window(0, row, layer.width, rows))


def make_example(folder: str, force: bool = False) -> list[str]:
    """Write the example layers into ``folder`` unless they are already there. Returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for layer in LAYERS:
        path = os.path.join(folder, f"{layer.name}.tif")
        if force or not os.path.exists(path):
            write_layer(layer, path)
        paths.append(path)
    return paths
