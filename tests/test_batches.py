"""Batches: how tiles are grouped into jobs, and what a batch job keeps, remakes and loses."""

import json
import math
import os
import threading

import numpy as np
import pytest
import rasterio
from affine import Affine

from workflow_lib.config import validate_config
from workflow_lib.engines.batch import (DIGEST_TAG, TileHooks, batch_work, compiled_kernels, forget_incomplete_batches,
                                        run_batch, tile_digest)
from workflow_lib.planning.batches import (MAX_JOBS, MIN_BATCH_WORK, MIN_SPLIT_WORK, MIN_WAVE_WORK, make_batches,
                                          rectangle, tiles_per_batch)
from workflow_lib.domain import TileIndex, chunk_path
from workflow_lib.planning.plan import build_plan

from .helpers import read_band, refused_batch, smooth_field, write_raster


def grid_tiles(rows, cols, keep=lambda r, c: True):
    return [TileIndex(r, c) for r in range(rows) for c in range(cols) if keep(r, c)]


def test_batches_are_rectangles_that_cover_every_tile_once():
    tiles = grid_tiles(13, 17, keep=lambda r, c: (r * 7 + c * 3) % 5 != 0)  # holes, as at a coast
    batches = make_batches(tiles, 13, 17, per_batch=12)
    seen = [t for b in batches for t in b.tiles]
    assert sorted(seen) == sorted(tiles) and len(seen) == len(set(seen))
    for b in batches:
        assert len(b.tiles) <= 12 and b.tiles
        for t in b.tiles:
            assert b.rows[0] <= t.row < b.rows[1] and b.cols[0] <= t.col < b.cols[1]
    assert rectangle(12, 13, 17) == (2, 6)  # 21 batches (3 x 4 tiles would make 25)
    assert rectangle(50, 2, 1000) == (2, 25)  # a grid two tiles high: wide batches
    assert rectangle(57, 10, 10) == (5, 10)  # 2 batches of 50, not 7 x 8 with strips of 14, 24 and 6
    assert len({b.id for b in batches}) == len(batches)


def test_rectangles_make_the_fewest_batches_then_the_squarest():
    """Against every shape tried by brute force: no batch above per_batch, no shape that covers the
    grid with fewer rectangles, and among the fewest none squarer."""
    for per_batch in (1, 2, 3, 7, 12, 57, 100):
        for rows, cols in ((1, 1), (1, 9), (9, 1), (10, 10), (13, 17), (31, 7)):
            h, w = rectangle(per_batch, rows, cols)
            count = -(-rows // h) * -(-cols // w)
            assert h * w <= per_batch and h <= rows and w <= cols
            shapes = [(-(-rows // a) * -(-cols // b), max(a / b, b / a)) for a in range(1, rows + 1)
                      for b in range(1, cols + 1) if a * b <= per_batch]
            fewest = min(n for n, _ in shapes)
            assert count == fewest, (per_batch, rows, cols, (h, w))
            assert max(h / w, w / h) <= min(r for n, r in shapes if n == fewest) + 1e-9


def test_batch_count_is_bounded_for_sparse_datasets():
    # A diagonal strip: nearly every square rectangle holds few tiles.
    tiles = grid_tiles(400, 400, keep=lambda r, c: abs(r - c) < 2)
    bounded = make_batches(tiles, 400, 400, per_batch=4, max_batches=100)
    assert len(bounded) <= 100
    assert sorted(t for b in bounded for t in b.tiles) == sorted(tiles)


def test_tiles_per_batch_from_work_and_job_count():
    big = 2 * MIN_BATCH_WORK
    assert tiles_per_batch(tile_work=big, tiles_in_dataset=50, tiles_in_run=50) == 1  # big tiles: one each
    assert tiles_per_batch(tile_work=1e7, tiles_in_dataset=10_000, tiles_in_run=10_000) == 400  # by work (4e9)
    # A 40,000^2 float32 input at x4 (100 tiles of 1024 px, 1.78e7 each): one job, not two.
    assert tiles_per_batch(tile_work=1024**2 * 17, tiles_in_dataset=100, tiles_in_run=100) == 100
    assert tiles_per_batch(tile_work=big, tiles_in_dataset=10**6, tiles_in_run=10**6) == 10**6 // MAX_JOBS
    assert tiles_per_batch(tile_work=1.0, tiles_in_dataset=7, tiles_in_run=7) == 7  # never beyond the dataset


def test_a_machine_of_many_cores_gets_enough_batches_to_keep_them_busy():
    """16 cores and 2 threads per job: 8 jobs at once. The 40,000^2 case (100 tiles of 1.78e7)
    is one batch on 2 cores; on 16 it is cut into one job per slot, each keeping MIN_WAVE_WORK
    (17 tiles: 8 rectangles of the 10 x 10 tile grid). A run of 2,400 such tiles: 11 jobs by work
    alone, 3 waves of 8 (100 tiles each) on 16 cores; one of 10,000 tiles has 45 jobs by work
    already. Never less work per job than MIN_WAVE_WORK, nor more jobs than one per slot below
    MIN_SPLIT_WORK, nor more than MAX_JOBS."""
    tile = 1024**2 * 17
    assert tiles_per_batch(tile_work=tile, tiles_in_dataset=100, tiles_in_run=100, slots=1) == 100
    assert tiles_per_batch(tile_work=tile, tiles_in_dataset=100, tiles_in_run=100, slots=8) == 17
    assert len(make_batches(_grid_tiles(10, 10), 10, 10, 17)) == 8
    assert tiles_per_batch(tile_work=tile, tiles_in_dataset=100, tiles_in_run=100, slots=2) == 50
    assert tiles_per_batch(tile_work=tile, tiles_in_dataset=2400, tiles_in_run=2400, slots=1) == 225
    assert tiles_per_batch(tile_work=tile, tiles_in_dataset=2400, tiles_in_run=2400, slots=8) == 100
    assert tiles_per_batch(tile_work=tile, tiles_in_dataset=10_000, tiles_in_run=10_000, slots=8) == 225
    for n in (10, 100, 1000, 10**5):
        for slots in (2, 8, 32):
            per_batch = tiles_per_batch(tile_work=tile, tiles_in_dataset=n, tiles_in_run=n, slots=slots)
            assert per_batch * tile >= min(MIN_WAVE_WORK, n * tile), (n, slots)
            if per_batch * tile < MIN_SPLIT_WORK:
                assert math.ceil(n / per_batch) <= slots, (n, slots)
    # Small work stays one job whatever the machine: a job's fixed cost would dominate.
    assert tiles_per_batch(tile_work=1e6, tiles_in_dataset=100, tiles_in_run=100, slots=32) == 100
    # Huge runs: the job count bound still holds.
    assert tiles_per_batch(tile_work=1e9, tiles_in_dataset=10**6, tiles_in_run=10**6, slots=32) == 10**6 // MAX_JOBS


def _grid_tiles(rows: int, cols: int) -> list[TileIndex]:
    return [TileIndex(r, c) for r in range(rows) for c in range(cols)]


def plan_of(tmp_path, **extra):
    path = write_raster(tmp_path / "in.tif", smooth_field(400, 300), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    config = {"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 32,
              "datasets": {"d": {"path": path, "method": "average"}}, **extra}
    return build_plan(validate_config(config))


def test_tiles_per_job_from_the_config_and_auto(tmp_path):
    fixed = plan_of(tmp_path, tiles_per_job=4).datasets["d"]
    assert fixed.tile_count == 35 and all(len(b.tiles) <= 4 for b in fixed.batches) and len(fixed.batches) >= 9
    auto = plan_of(tmp_path).datasets["d"]
    assert len(auto.batches) == 1  # 35 small tiles: far less work than one job's worth


def test_batch_keeps_current_tiles_and_remakes_others(tmp_path):
    plan = plan_of(tmp_path)
    d = plan.datasets["d"]
    tiles = list(d.tiles)
    out = str(tmp_path / "tiles")
    first = run_batch(d, plan.grid, "b", tiles, out, mem_mb=400, threads=2)
    assert sorted(first.made) == sorted(tiles) and first.complete
    with rasterio.open(os.path.join(out, f"{tiles[0]}.tif")) as src:
        assert src.tags()[DIGEST_TAG] == tile_digest(plan.grid, d)
        pixels = src.read(1)
    times = {t: os.stat(os.path.join(out, f"{t}.tif")).st_mtime_ns for t in tiles}
    again = run_batch(d, plan.grid, "b", tiles, out, mem_mb=400, threads=2)
    assert again.made == [] and sorted(again.kept) == sorted(tiles)
    assert {t: os.stat(os.path.join(out, f"{t}.tif")).st_mtime_ns for t in tiles} == times
    # Another method: another digest, every tile made again.
    other = build_plan(validate_config({"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 32,
                                        "datasets": {"d": {"path": d.header.path, "method": "max"}}})).datasets["d"]
    assert tile_digest(plan.grid, other) != tile_digest(plan.grid, d)
    remade = run_batch(other, plan.grid, "b", tiles, out, mem_mb=400, threads=2)
    assert sorted(remade.made) == sorted(tiles)
    with rasterio.open(os.path.join(out, f"{tiles[0]}.tif")) as src:
        assert not np.array_equal(src.read(1), pixels)


def test_a_failing_tile_does_not_stop_the_others_and_a_stop_starts_no_new_tile(tmp_path, monkeypatch):
    import workflow_lib.engines.batch as batch_module

    plan = plan_of(tmp_path)
    d = plan.datasets["d"]
    tiles = list(d.tiles)
    real = batch_module.resample_tile

    def flaky(name, header, settings, grid, tile, out_path, **kw):
        if tile.index == tiles[3]:
            raise RuntimeError("a corrupt block")
        return real(name, header, settings, grid, tile, out_path, **kw)

    monkeypatch.setattr(batch_module, "resample_tile", flaky)
    failures = []
    result = run_batch(d, plan.grid, "b", tiles, str(tmp_path / "t"), mem_mb=400, threads=2,
                       hooks=TileHooks(failed=lambda t, e: failures.append((t, e))))
    assert list(result.failed) == [tiles[3]] and "a corrupt block" in result.failed[tiles[3]]
    assert failures == [(tiles[3], result.failed[tiles[3]])]
    assert sorted(result.made) == sorted(set(tiles) - {tiles[3]})
    # A stop after the third tile started: the running ones finish, no other starts.
    stop = threading.Event()
    started = []

    def on_start(t):
        started.append(t)
        if len(started) == 3:
            stop.set()

    monkeypatch.setattr(batch_module, "resample_tile", real)
    out = str(tmp_path / "s")
    result = run_batch(d, plan.grid, "b", tiles, out, mem_mb=400, threads=2, stop=stop,
                       hooks=TileHooks(started=on_start))
    assert 3 <= len(result.made) <= 4 and len(result.made) + len(result.left) == len(tiles)
    assert sorted(os.listdir(out)) == sorted(f"{t}.tif" for t in result.made)


@pytest.mark.parametrize("formats", [["cog"], ["zarr", "cog"]])
def test_a_missing_tile_reopens_its_batch(tmp_path, formats):
    plan = plan_of(tmp_path, tiles_per_job=4, output={"formats": formats})
    d = plan.datasets["d"]
    results = tmp_path / "results"
    for b in d.batches:
        (results / "batches" / "d").mkdir(parents=True, exist_ok=True)
        (results / "batches" / "d" / f"{b.id}.json").write_text("{}")
        (results / "tiles" / "d").mkdir(parents=True, exist_ok=True)
        for t in b.tiles:
            (results / "tiles" / "d" / f"{t}.tif").write_bytes(b"")
            chunk = chunk_path(str(results / "stack.zarr"), "d", t, False)
            os.makedirs(os.path.dirname(chunk), exist_ok=True)
            open(chunk, "wb").close()
    victim = d.batches[2]
    os.unlink(results / "tiles" / "d" / f"{victim.tiles[-1]}.tif")
    removed = forget_incomplete_batches(plan, str(results))
    assert removed == [str(results / "batches" / "d" / f"{victim.id}.json")]
    assert sorted(os.listdir(results / "batches" / "d")) == sorted(f"{b.id}.json" for b in d.batches if b != victim)
    # A missing chunk reopens its batch too, when the store is among the formats (the tile is kept and
    # copied into it again), and only then.
    other = d.batches[5]
    os.unlink(chunk_path(str(results / "stack.zarr"), "d", other.tiles[0], False))
    removed = forget_incomplete_batches(plan, str(results))
    assert removed == ([str(results / "batches" / "d" / f"{other.id}.json")] if "zarr" in formats else [])


def test_a_batch_reports_each_tiles_chunks_and_gathers_the_statistics_of_its_tiles(tmp_path):
    plan = plan_of(tmp_path)
    d = plan.datasets["d"]
    tiles = list(d.tiles)
    out = str(tmp_path / "tiles")
    seen: dict[str, list] = {}
    hooks = TileHooks(progress=lambda tile, done, total, read: seen.setdefault(tile, []).append((done, total, read)))
    result = run_batch(d, plan.grid, "b", tiles[:3], out, mem_mb=400, threads=2, hooks=hooks, max_chunk_bytes=2000)
    for tile in tiles[:3]:
        steps = seen[tile]
        total = steps[0][1]
        assert total > 1 and [s[0] for s in steps] == list(range(1, total + 1))  # every chunk, in order
        assert all(s[1] == total for s in steps) and [s[2] for s in steps] == sorted(s[2] for s in steps)
    # The batch's statistics are those of its tiles' pixels, made or kept.
    pixels = np.concatenate([read_band(os.path.join(out, f"{t}.tif")).ravel() for t in tiles[:3]])
    valid = pixels[pixels != d.settings.dst_nodata]
    valid = valid[~np.isnan(valid)] if valid.dtype.kind == "f" else valid
    for r in (result, run_batch(d, plan.grid, "b", tiles[:3], out, mem_mb=400, threads=2)):
        assert r.stats.total == pixels.size and r.stats.valid == valid.size
        assert (r.stats.min, r.stats.max) == (float(valid.min()), float(valid.max()))
        assert r.stats.mean == pytest.approx(float(valid.astype(np.float64).mean()), rel=1e-12)
    assert r.made == []  # the second run kept every tile and read their statistics from their tags


def test_statistics_of_batches_from_before_they_were_recorded_come_from_their_tiles(tmp_path):
    from workflow_lib.engines.batch import kept_tile_stats, manifest_tiles, tile_tags

    plan = plan_of(tmp_path)
    d = plan.datasets["d"]
    tiles = list(d.tiles)[:4]
    out = str(tmp_path / "tiles")
    result = run_batch(d, plan.grid, "b", tiles, out, mem_mb=400, threads=2)
    old = tmp_path / "old.json"  # a manifest of the previous version: no "stats"
    old.write_text(json.dumps({"dataset": "d", "batch": "b", "tiles": [t.id for t in tiles]}))
    paths, stats = manifest_tiles([str(old)], out, d.settings.dst_nodata)
    assert paths == [os.path.join(out, f"{t}.tif") for t in tiles]
    assert (stats.total, stats.valid, stats.min, stats.max) == (result.stats.total, result.stats.valid,
                                                                result.stats.min, result.stats.max)
    assert np.array_equal(stats.hist, result.stats.hist)
    # A tile without the tag (made before it existed) is read once for its figures.
    path = paths[0]
    from_pixels = kept_tile_stats(path, {}, d.settings.dst_nodata)
    from_tag = kept_tile_stats(path, tile_tags(path), d.settings.dst_nodata)
    assert (from_pixels.valid, from_pixels.min, from_pixels.max) == (from_tag.valid, from_tag.min, from_tag.max)
    assert from_pixels.mean == pytest.approx(from_tag.mean, rel=1e-12)


def test_small_jobs_reduce_blocks_with_numpy_and_give_the_same_pixels(tmp_path):
    """A job whose mem_mb cannot hold numba beside a tile uses the NumPy reductions, and never loads
    numba (its compiler dies of SIGSEGV when an allocation fails under memory.enforce); the pixels
    are the compiled kernels' bit for bit."""
    import subprocess
    import sys

    plan = plan_of(tmp_path)
    d = plan.datasets["d"]
    assert d.settings.engine == "numpy" and compiled_kernels(d, 512) and not compiled_kernels(d, 300)
    tiles = list(d.tiles)[:6]
    run_batch(d, plan.grid, "b", tiles, str(tmp_path / "compiled"), mem_mb=512, threads=2)
    script = (
        "import sys\n"
        "from workflow_lib.config import validate_config\n"
        "from workflow_lib.domain import TileIndex\n"
        "from workflow_lib.engines.batch import run_batch\n"
        "from workflow_lib.planning.plan import build_plan\n"
        f"config = {{'target': {{'crs': 'EPSG:32632', 'resolution': 20}}, 'tile_size': 32,\n"
        f"          'datasets': {{'d': {{'path': {str(tmp_path / 'in.tif')!r}, 'method': 'average'}}}}}}\n"
        "plan = build_plan(validate_config(config))\n"
        f"result = run_batch(plan.datasets['d'], plan.grid, 'b', {tiles!r}, {str(tmp_path / 'numpy')!r}, mem_mb=200)\n"
        "assert len(result.made) == 6, result\n"
        "print('numba loaded' if 'numba' in sys.modules else 'numba not loaded')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "numba not loaded", proc.stdout + proc.stderr
    for tile in tiles:
        a, b = read_band(tmp_path / "compiled" / f"{tile}.tif"), read_band(tmp_path / "numpy" / f"{tile}.tif")
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), tile


def test_a_batch_of_little_work_does_without_the_compiled_kernels(tmp_path):
    """Importing numba and loading its kernels (about 0.6 s) costs a small job more than they save:
    a batch of less than 10 million source pixels reduces with NumPy (the same pixels, bit for bit:
    the test above) and never loads numba."""
    import subprocess
    import sys

    plan = plan_of(tmp_path)
    d = plan.datasets["d"]
    work = batch_work(d, plan.grid, list(d.tiles))
    assert work == 400 * 300 + 200 * 150  # every source pixel read once, every target pixel written once
    assert not compiled_kernels(d, 512, work) and compiled_kernels(d, 512, 10e6) and compiled_kernels(d, 512)
    script = (
        "import sys\n"
        "from workflow_lib.config import validate_config\n"
        "from workflow_lib.engines.batch import batch_work, prepare_kernels\n"
        "from workflow_lib.planning.plan import build_plan\n"
        f"config = {{'target': {{'crs': 'EPSG:32632', 'resolution': 20}}, 'tile_size': 32,\n"
        f"          'datasets': {{'d': {{'path': {str(tmp_path / 'in.tif')!r}, 'method': 'average'}}}}}}\n"
        "plan = build_plan(validate_config(config))\n"
        "d = plan.datasets['d']\n"
        "assert not prepare_kernels(d, 512, plan.grid, batch_work(d, plan.grid, list(d.tiles)))\n"
        "print('numba loaded' if 'numba' in sys.modules else 'numba not loaded')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "numba not loaded", proc.stdout + proc.stderr


def test_an_input_replaced_after_planning_fails_its_tiles_and_leaves_none(tmp_path, monkeypatch):
    """A file replaced between planning (the register job) and a batch would give the new pixels
    on the planned header: every tile fails, naming the file and what to do, and none is left on
    disk; replaced while a tile reads it, that tile is removed and fails too."""
    import workflow_lib.engines.batch as batch_module

    plan = plan_of(tmp_path)
    d = plan.datasets["d"]
    tiles = list(d.tiles)
    path = d.header.path
    write_raster(path, smooth_field(380, 300, seed=5), "EPSG:32632", Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    out = str(tmp_path / "tiles")
    result = run_batch(d, plan.grid, "b", tiles, out, mem_mb=400, threads=2)
    assert sorted(result.failed) == sorted(tiles) and result.made == []
    message = result.failed[tiles[0]]
    assert message.startswith(f"dataset 'd' ({path}): changed since the run was planned (size ")
    assert "run again" in message and "\n" not in message
    assert not os.path.exists(out) or os.listdir(out) == []
    # Planned again, with the new file: every tile is made.
    plan = build_plan(validate_config(
        {"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 32,
         "datasets": {"d": {"path": path, "method": "average"}}}))
    d = plan.datasets["d"]
    tiles = list(d.tiles)
    assert sorted(run_batch(d, plan.grid, "b", tiles, out, mem_mb=400, threads=2).made) == sorted(tiles)
    # Replaced while the third tile is made: that tile fails and is not on disk.
    real = batch_module.resample_tile

    def replacing(name, header, settings, grid, tile, out_path, **kw):
        figures = real(name, header, settings, grid, tile, out_path, **kw)
        if tile.index == tiles[2]:
            os.utime(path, ns=(header.mtime_ns + 10**9, header.mtime_ns + 10**9))
        return figures

    monkeypatch.setattr(batch_module, "resample_tile", replacing)
    fresh = str(tmp_path / "fresh")
    result = run_batch(d, plan.grid, "b", tiles, fresh, mem_mb=400, threads=1)
    assert tiles[2] in result.failed and not os.path.exists(os.path.join(fresh, f"{tiles[2]}.tif"))
    assert all(os.path.exists(os.path.join(fresh, f"{t}.tif")) for t in result.made)


def test_tiles_to_make_counts_missing_tiles_and_tiles_made_with_other_settings(tmp_path):
    """What the dry run says of a batch: tiles missing, plus tiles whose digest is not the plan's."""
    from workflow_lib.planning.batches import Batch
    from workflow_lib.planning.digest import TilesToMake

    ids = tuple(f"r0000_c{c:04d}" for c in range(6))
    batch = Batch((0, 1), (0, 6), ids)

    def tile(tile_id, digest):
        write_raster(tmp_path / f"{tile_id}.tif", np.zeros((4, 4), "uint8"), "EPSG:32632",
                     Affine(10, 0, 0, 0, -10, 0), 0)
        with rasterio.open(tmp_path / f"{tile_id}.tif", "r+") as dst:
            dst.update_tags(**{DIGEST_TAG: digest})

    def count():
        return TilesToMake(batch, str(tmp_path), "now").count()

    assert count() == 6
    for t in ids[:4]:
        tile(t, "now")
    assert count() == 2  # two missing
    for t in ids[:4]:
        tile(t, "before")
    assert count() == 6  # four made with other settings, two missing
    tile(ids[3], "now")  # a batch stopped half-way through remaking: every tile read
    assert count() == 5
    assert str(TilesToMake(batch, str(tmp_path), "now")) == ("tile rows 0000-0000, columns 0000-0005, "
                                                            "5 of 6 tiles to make")


def test_a_member_of_a_many_file_dataset_replaced_after_planning_fails_the_tiles(tmp_path):
    """A dataset of two files (one VRT of members): a member changed after planning fails every
    tile, naming the dataset and its members, and leaves none."""
    left = write_raster(tmp_path / "left.tif", smooth_field(200, 150, seed=1), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    right = write_raster(tmp_path / "right.tif", smooth_field(200, 150, seed=2), "EPSG:32632",
                         Affine(10, 0, 501500, 0, -10, 5200000), -9999.0)
    plan = build_plan(validate_config(
        {"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 32,
         "datasets": {"d": {"path": [left, right], "method": "average"}}}), cache_dir=str(tmp_path / "cache"))
    d = plan.datasets["d"]
    assert d.header.path.endswith(".vrt")
    tiles = list(d.tiles)[:4]
    assert sorted(run_batch(d, plan.grid, "b", tiles, str(tmp_path / "before"), mem_mb=400).made) == sorted(tiles)
    st = os.stat(right)
    os.utime(right, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert refused_batch(d, plan.grid, tiles, str(tmp_path / "after")) == (
        f"dataset 'd' ({d.header.path}): one of its 2 member files changed since the run was planned (size or "
        "modification time, or ETag for a remote one): run again, and the next run plans with it")


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a file system of 96 kB (a tmpfs, mounted as root), which a few tiles fill."""
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(folder)], capture_output=True,
                             text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip(f"a small file system needs root and mount: {mounted.stderr.strip() if mounted else 'not root'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_fails_the_tiles_it_cannot_hold_naming_the_cause_and_keeps_the_others(tmp_path, full_disk):
    """Every tile is attempted; those that do not fit fail with "No space left on device" and the
    folder, and leave no file (GDAL's GeoTIFF writer raised nothing and left tiles of 0 bytes, made
    as far as the batch knew); the tiles written before it filled up are whole."""
    plan = plan_of(tmp_path)
    d = plan.datasets["d"]
    tiles = list(d.tiles)
    reference = str(tmp_path / "reference")
    run_batch(d, plan.grid, "b", tiles, reference, mem_mb=400)
    out = str(full_disk / "tiles")
    result = run_batch(d, plan.grid, "b", tiles, out, mem_mb=400, threads=2)
    assert result.failed and sorted([*result.made, *result.failed]) == sorted(tiles)
    assert all("No space left on device" in e and str(full_disk) in e and "See previous" not in e
               for e in result.failed.values()), set(result.failed.values())
    assert sorted(os.listdir(out)) == sorted(f"{t}.tif" for t in result.made)
    for t in result.made:
        assert np.array_equal(read_band(os.path.join(out, f"{t}.tif")), read_band(os.path.join(reference, f"{t}.tif")))
