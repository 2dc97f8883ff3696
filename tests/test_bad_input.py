"""Bad input: each case works correctly or stops with an error naming the dataset, the file and
the problem, losing nothing that was already done."""

import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine

from workflow_lib.config import validate_config
from workflow_lib.errors import InputRasterError
from workflow_lib.planning.plan import build_plan

from .helpers import (REPO, read_band, run_tiles_and_mosaics, smooth_field, snakemake, synthetic_config, write_config,
                      write_raster)

UTM = Affine(10, 0, 500000, 0, -10, 5200000)


def one(path, **extra):
    return validate_config({"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 32,
                            "datasets": {"d": {"path": str(path), "method": "average", **extra}}})


def test_complex_data_is_refused_naming_dataset_and_file(tmp_path):
    path = write_raster(tmp_path / "complex.tif", np.ones((16, 16), "complex64"), "EPSG:32632", UTM,
                        compress="none", tiled=False)
    with pytest.raises(InputRasterError, match=r"dataset 'd' \(.*complex\.tif\): data type complex64 is not "
                                               r"supported"):
        build_plan(one(path))


def test_nodata_override_out_of_the_type_range_is_refused(tmp_path):
    path = write_raster(tmp_path / "bytes.tif", np.ones((16, 16), "uint8"), "EPSG:32632", UTM, 0)
    with pytest.raises(InputRasterError, match=r"bytes\.tif\): datasets\.d\.nodata 300 does not fit data type "
                                               r"uint8 \(range 0\.\.255\)"):
        build_plan(one(path, nodata=300))


def test_all_nodata_raster_works_and_gives_an_all_nodata_mosaic(tmp_path):
    path = write_raster(tmp_path / "empty.tif", np.full((64, 64), -9999, "float32"), "EPSG:32632", UTM, -9999.0)
    plan, mosaics = run_tiles_and_mosaics(one(path), tmp_path)
    result = read_band(mosaics["d"])
    assert result.shape == (plan.grid.height, plan.grid.width) and (result == -9999).all()


def test_truncated_geotiff_fails_its_tiles_naming_dataset_and_file(tmp_path):
    path = tmp_path / "truncated.tif"
    write_raster(path, smooth_field(256, 256), "EPSG:32632", UTM, -9999.0, blockxsize=64, blockysize=64)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(InputRasterError, match=r"dataset 'd' \(.*truncated\.tif\): read of window .* failed"):
        run_tiles_and_mosaics(one(path), tmp_path)


@pytest.mark.integration
def test_corrupt_tile_left_in_results_is_named_removed_and_remade(tmp_path):
    """A tile under its final name that is not whole (another tool, a crash outside this workflow):
    the mosaic names it and removes it; the next run makes it again and the result is right."""
    write_config(tmp_path, synthetic_config(tmp_path))
    snakemake(tmp_path, "--cores", "2")
    with rasterio.open(tmp_path / "results" / "mosaics" / "dem.tif") as src:
        expected = src.read(1)
    tile_dir = tmp_path / "results" / "tiles" / "dem"
    victim = tile_dir / sorted(os.listdir(tile_dir))[3]
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 3)
    os.unlink(tmp_path / "results" / "mosaics" / "dem.tif")  # as after a crash before the mosaic
    os.unlink(tmp_path / "results" / "stack.tif")
    failed = snakemake(tmp_path, "--cores", "2", check=False)
    assert failed.returncode != 0
    text = failed.stdout + failed.stderr
    assert f"dataset 'dem' ({victim}): 1 corrupt tile file(s) ({victim.name}" in text
    assert not victim.exists()
    snakemake(tmp_path, "--cores", "2")
    with rasterio.open(tmp_path / "results" / "mosaics" / "dem.tif") as src:
        assert np.array_equal(src.read(1), expected)


WRITE_WITH_SIZE_LIMIT = """
import resource, signal, sys
from workflow_lib.config import validate_config
from workflow_lib.planning.plan import build_plan
from workflow_lib.engines.resample import resample_tile
from workflow_lib.errors import OutputWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
cfg = validate_config({"target": {"crs": "EPSG:32632", "resolution": 10}, "tile_size": 1024, "output": {},
                       "datasets": {"d": {"path": sys.argv[1], "method": "nearest"}}})
plan = build_plan(cfg)
d = plan.datasets["d"]
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    resample_tile("d", d.header, d.settings, plan.grid, plan.grid.tile(d.tiles[0]), sys.argv[2], mem_mb=400,
                  compress="none")
except OutputWriteError as exc:
    print("OutputWriteError:", exc)
    sys.exit(3)
"""


def test_a_full_disk_leaves_no_partial_file_and_names_path_and_cause(tmp_path):
    source = write_raster(tmp_path / "src.tif", np.random.default_rng(0).random((600, 600), dtype="float32"),
                          "EPSG:32632", UTM, -9999.0)
    out = tmp_path / "out" / "r0000_c0000.tif"
    proc = subprocess.run([sys.executable, "-c", WRITE_WITH_SIZE_LIMIT, source, str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"OutputWriteError: writing {out} failed:" in proc.stdout
    assert "File too large" in proc.stdout or "No space" in proc.stdout or "Write" in proc.stdout, proc.stdout
    assert os.listdir(out.parent) == []  # neither the tile nor a temporary file
