"""The report: statistics gathered while tiles are written (against NumPy on the whole mosaic),
quicklooks, the tile figures, `snakemake --report`, and `onegrid results`."""

import json
import os
import subprocess
import sys
import zipfile

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
import rasterio

from workflow_lib.statistics import PixelStats, key_values
from workflow_lib.domain import TileIndex
from workflow_lib.status import StatusStore
from workflow_lib.views.report import quicklook_array

from .helpers import REPO, read_band, snakemake, synthetic_config, write_config


def numpy_statistics(path):
    """The independent reference: the whole mosaic read at once."""
    with rasterio.open(path) as src:
        data, nodata = src.read(1), src.nodata
    ok = np.ones(data.shape, bool) if data.dtype.kind != "f" else ~np.isnan(data)
    if nodata is not None and not np.isnan(nodata):
        ok &= data != nodata
    return data, data[ok]


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8"])
def test_statistics_merged_from_parts_equal_those_of_the_whole(dtype):
    rng = np.random.default_rng(3)
    whole = (rng.normal(20, 60, (900, 700)) if dtype != "uint8" else rng.integers(0, 9, (900, 700))).astype(dtype)
    nodata = {"float32": -9999.0, "int16": -32768, "uint8": 0}[dtype]
    whole[100:200, 50:90] = nodata
    if dtype == "float32":
        whole[300, :40] = np.nan
    merged = PixelStats()
    for part in np.array_split(whole, 6):
        for piece in np.array_split(part, 5, axis=1):
            stats = PixelStats()
            stats.add(np.ascontiguousarray(piece), nodata)
            merged.merge(PixelStats.from_json(stats.to_json()))  # as tiles keep them, in their tags
    values = whole[(whole != nodata) & ~np.isnan(whole.astype(np.float64))].astype(np.float64)
    assert (merged.total, merged.valid) == (whole.size, values.size)
    assert (merged.min, merged.max) == (values.min(), values.max())
    assert merged.mean == pytest.approx(values.mean(), rel=1e-12)
    assert merged.std == pytest.approx(values.std(), rel=1e-10)
    summary = merged.summary(categorical=dtype == "uint8")
    if dtype == "uint8":
        classes, counts = np.unique(values, return_counts=True)
        assert summary["histogram"] == {"values": classes.tolist(), "counts": counts.tolist()}
    else:
        edges = np.asarray(summary["histogram"]["edges"])
        reference, _ = np.histogram(values.astype(np.float32), edges)
        assert summary["histogram"]["counts"] == reference.tolist() and reference.sum() == values.size
        assert 25 <= len(edges) - 1 <= 32 and edges[0] <= values.min() and edges[-1] > values.max()


def test_classes_keep_their_exact_values_negative_ones_too():
    stats = PixelStats()
    stats.add(np.array([-200, -5, -5, 0, 3, 255, 255, 255], np.int16), None)
    assert stats.summary(categorical=True)["histogram"] == {"values": [-200, -5, 0, 3, 255], "counts": [1, 2, 1, 1, 3]}
    assert key_values(np.array([0x8000])).tolist() == [0.0]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report")
    write_config(workdir, synthetic_config(workdir))
    snakemake(workdir, "--cores", "2", "--resources", "mem_mb=2000")
    snakemake(workdir, "--report", "report.zip")
    return workdir


@pytest.mark.integration
def test_statistics_of_each_mosaic_equal_numpy_on_the_whole_mosaic(reported, record):
    store = StatusStore(f"sqlite:///{reported}/results/status.sqlite")
    for name in ("dem", "landcover", "temperature"):
        stats = json.loads((reported / "results" / "statistics" / f"{name}.json").read_text())
        data, values = numpy_statistics(reported / "results" / "mosaics" / f"{name}.tif")
        values64 = values.astype(np.float64)
        assert (stats["total_pixels"], stats["valid_pixels"]) == (data.size, values.size)
        assert (stats["min"], stats["max"]) == (values64.min(), values64.max())
        assert stats["mean"] == pytest.approx(values64.mean(), rel=1e-12)
        assert stats["std"] == pytest.approx(values64.std(), rel=1e-10)
        if name == "landcover":  # mode: one bar per class
            classes, counts = np.unique(values64, return_counts=True)
            assert stats["histogram"] == {"values": classes.tolist(), "counts": counts.tolist()}
        else:
            reference, _ = np.histogram(values.astype(np.float32), np.asarray(stats["histogram"]["edges"]))
            assert stats["histogram"]["counts"] == reference.tolist()
        row = store.query("SELECT total_pixels, valid_pixels, stat_min, stat_max, stat_mean, stat_std, histogram "
                          "FROM datasets WHERE name = ?", (name,))[0]
        assert row[:6] == (stats["total_pixels"], stats["valid_pixels"], stats["min"], stats["max"], stats["mean"],
                           stats["std"])
        assert json.loads(row[6]) == stats["histogram"]
        record(f"report statistics {name}: {values.size:,} of {data.size:,} pixels valid, min {stats['min']:.6g}, "
               f"max {stats['max']:.6g}, mean {stats['mean']:.6g}: equal to NumPy on the whole mosaic")
    out = subprocess.run([sys.executable, "-m", "workflow_lib", "results"], cwd=reported, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("Statistics (status database):")[1].splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["dem", "landcover", "temperature"]
    landcover = next(line for line in lines if line.split()[:1] == ["landcover"]).split()
    stats = json.loads((reported / "results" / "statistics" / "landcover.json").read_text())
    assert landcover[1] == f"{100 * stats['valid_share']:.1f}%" and float(landcover[2]) == stats["min"]


@pytest.mark.integration
def test_quicklooks_come_from_the_overviews_with_a_palette_for_classes(reported):
    for name, categorical in (("dem", False), ("landcover", True), ("temperature", False)):
        mosaic = reported / "results" / "mosaics" / f"{name}.tif"
        data, factor = quicklook_array(str(mosaic), "mode" if categorical else "average", longest=64)
        assert max(data.shape) == 64 and factor > 1
        _, values = numpy_statistics(mosaic)
        # Nodata stays masked; classes stay classes (nearest); averages stay within the data's range.
        assert data.mask.mean() == pytest.approx(1 - values.size / read_band(mosaic).size, abs=0.08)
        if categorical:
            assert set(np.unique(data.compressed())) <= set(np.unique(values))
        else:
            assert values.min() <= data.min() and data.max() <= values.max()
            assert data.mean() == pytest.approx(values.mean(), rel=0.03)
        png = matplotlib.image.imread(reported / "results" / "report" / "quicklooks" / f"{name}.png")
        rgb = png[..., :3].reshape(-1, 3).astype(np.float64)

        def shown(colour) -> bool:
            return np.abs(rgb - colour).max(axis=1).min() < 0.02

        if categorical:  # one colour of the categorical palette per class, in the map and its legend
            classes = json.loads((reported / "results" / "statistics" / "landcover.json").read_text())
            n = len(classes["histogram"]["values"])
            assert all(shown(c) for c in plt.get_cmap("tab20")(np.arange(n))[:, :3])
        else:  # a colour ramp, whose two ends the colour bar shows
            assert all(shown(c) for c in plt.get_cmap("viridis")([0.0, 1.0])[:, :3])
            assert len(np.unique(np.round(rgb, 2), axis=0)) > 50


@pytest.mark.integration
def test_tile_figures_and_the_report_hold_every_part(reported):
    store = StatusStore(f"sqlite:///{reported}/results/status.sqlite")
    rows = store.query("SELECT dataset, tile, status FROM tiles")
    on_disk = {(d, f[:-4]) for d in os.listdir(reported / "results" / "tiles")
               for f in os.listdir(reported / "results" / "tiles" / d)}
    assert {(d, t) for d, t, _ in rows} == on_disk and {s for *_, s in rows} == {"done"}
    for png in ("tiles.png", "tile_figures.png"):
        image = matplotlib.image.imread(reported / "results" / "report" / png)
        assert image.shape[0] > 200 and image.shape[1] > 400
    with zipfile.ZipFile(reported / "report.zip") as z:
        names = z.namelist()
        text = "".join(z.read(n).decode("utf-8", "replace") for n in names
                       if n.endswith((".html", ".js")) and "/raw/" not in n)
    for part in ["/dem.png", "/landcover.png", "/temperature.png", "/statistics.html", "/tiles.png",
                 "/tile_figures.png", "/config.html"]:
        assert any(n.endswith(part) for n in names), (part, names)
    assert "Quicklook of a dataset's mosaic" in text and "estimated work" in text  # the captions
    page = (reported / "results" / "report" / "statistics.html").read_text()
    assert page.count("<table>") == 3 and page.count("data:image/png;base64,") == 3
    assert "standard deviation" in page
    assert TileIndex.parse(rows[0][1])  # tile ids as the map places them
