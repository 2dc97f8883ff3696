"""A tile job whose reads stall is stopped with a clear message and where it was stuck."""

import os

import pytest

from workflow_lib.status import StatusStore

from .helpers import STALLING_VRT, snakemake, write_config

pytestmark = pytest.mark.integration

def test_stalled_read_fails_the_job_with_a_message_and_a_stack_dump(tmp_path):
    # The raster's pixels live behind a named pipe that nobody writes: its header reads at once,
    # and the first pixel read blocks inside GDAL forever, as on a dead network mount.
    os.mkfifo(tmp_path / "pipe.tif")
    (tmp_path / "stalling.vrt").write_text(STALLING_VRT)
    write_config(tmp_path, {
        "target": {"crs": "EPSG:32632", "resolution": 40}, "tile_size": 256, "stall_timeout": 3,
        "datasets": {"stuck": {"path": str(tmp_path / "stalling.vrt"), "method": "average"}},
    })
    proc = snakemake(tmp_path, "--cores", "1", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs" / "resample_batch" / "stuck" / "b0000_0000_1x1.log").read_text()
    assert "StallError: tile r0000_c0000 of dataset 'stuck'" in log and "made no progress for" in log
    assert "stall_timeout 3 s" in log
    assert "Current thread" in log and "read_source" in log, log  # where it was stuck
    store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite")
    (error,) = store.query("SELECT error FROM tiles WHERE dataset = 'stuck' AND tile = 'r0000_c0000'")[0]
    assert error.startswith("StallError") or "StallError" in error, error
    assert not (tmp_path / "results" / "tiles" / "stuck" / "r0000_c0000.tif").exists()
