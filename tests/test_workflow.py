"""The workflow end to end: snakemake as a subprocess in a temporary folder, results compared
with GDAL's whole-image warp."""

import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from affine import Affine
import pytest
import rasterio
import yaml

from workflow_lib.config import validate_config
from workflow_lib.planning.plan import build_plan

from .helpers import (REAL_DATA, REPO, compare, control, level_reference, reference_for, results_digests, snakemake,
                      synthetic_config, valid_mask, write_config, write_raster)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One full run of the workflow on synthetic inputs in three CRSs/dtypes."""
    workdir = tmp_path_factory.mktemp("workflow")
    config = synthetic_config(workdir)
    write_config(workdir, config)
    dry = snakemake(workdir, "-n", "--cores", "2")
    done = snakemake(workdir, "--cores", "2", "--resources", "mem_mb=2000")
    plan = build_plan(validate_config(yaml.safe_load(open(workdir / "config" / "config.yaml"))))
    return {"workdir": workdir, "plan": plan, "dry": dry.stdout + dry.stderr, "log": done.stdout + done.stderr}


def test_the_mosaics_and_the_stack_take_the_cores_a_run_has_up_to_8(run, tmp_path):
    """No single-threaded tail after the batches: a run's mosaic and stack jobs declare the cores
    it is given, at most 8, and at most one per 4 million pixels they write, so that a small mosaic
    leaves the other cores to the jobs beside it (Snakemake shows each job's threads in a dry run)."""
    def threads(workdir, cores):
        dry = snakemake(workdir, "-n", "--forceall", "--cores", cores).stdout
        blocks = re.findall(r"^rule (mosaic|stack):\n(.*?)(?=^\S|\Z)", dry, re.M | re.S)
        assert sorted(rule for rule, _ in blocks) == ["mosaic"] * 3 + ["stack"]
        found = [(rule, re.search(r"^\s+threads: (\d+)$", block, re.M)) for rule, block in blocks]
        return {(rule, int(m.group(1)) if m else 1) for rule, m in found}  # one value per rule

    # This run's grid, 110 x 116 pixels: one thread each, whatever the cores.
    assert threads(run["workdir"], "16") == {("mosaic", 1), ("stack", 1)}
    # The same datasets on a grid of 1 m, 4,381 x 4,615 pixels: a mosaic 5.1 million pixels (6
    # threads), the stack of three bands 15.2 million (16, but at most the cores and 8).
    config = yaml.safe_load(open(run["workdir"] / "config" / "config.yaml"))
    config["target"]["resolution"] = 1
    config["tile_size"] = 2048
    write_config(tmp_path, config)
    assert threads(tmp_path, "3") == {("mosaic", 3), ("stack", 3)}
    assert threads(tmp_path, "16") == {("mosaic", 6), ("stack", 8)}


def test_dry_run_lists_every_batch_job(run):
    plan = run["plan"]
    listed = re.findall(r"resample batch (b[\d_x]+) of ([\w-]+): tile rows (\d+)-(\d+), columns (\d+)-(\d+), "
                        r"(\d+) of (\d+) tiles to make with the ([\w-]+) engine", run["dry"])
    planned = {(name, b.id) for name, d in plan.datasets.items() for b in d.batches}
    assert {(name, b) for b, name, *_ in listed} == planned
    assert re.search(rf"resample_batch\s+{plan.batch_count}\b", run["dry"])
    for b, name, r0, r1, c0, c1, todo, total, _ in listed:
        batch = plan.datasets[name].batch_by_id[b]
        assert (int(r0), int(r1) + 1, int(c0), int(c1) + 1) == (*batch.rows, *batch.cols)
        assert int(todo) == int(total) == len(batch.tiles)  # nothing on disk before the first run
    # Each batch job says which engine resamples it.
    engines = {name: engine for _, name, *_, engine in listed}
    assert engines == {"dem": "numpy-blocks", "landcover": "numpy-blocks", "temperature": "gdal-warp"}
    # Every tile is in one batch; a batch is the tiles of a rectangle of the tile grid.
    for d in plan.datasets.values():
        assert sorted(d.tiles) == sorted(set(d.tiles))
        for b in d.batches:
            for t in b.tiles:
                assert b.rows[0] <= t.row < b.rows[1] and b.cols[0] <= t.col < b.cols[1]


def test_mosaics_equal_whole_image_gdal_warp(run, record):
    plan, workdir = run["plan"], run["workdir"]
    for name, dataset in plan.datasets.items():
        s = dataset.settings
        with rasterio.open(workdir / "results" / "mosaics" / f"{name}.tif") as src:
            assert src.crs == plan.grid.crs
            assert src.transform == plan.grid.transform
            assert (src.width, src.height) == (plan.grid.width, plan.grid.height)
            assert src.dtypes[0] == s.dst_dtype
            assert src.nodata == s.dst_nodata or (math.isnan(src.nodata) and math.isnan(s.dst_nodata))
            assert src.descriptions == (name,)
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            result = src.read(1)
        reference = reference_for(plan, name).data
        c = compare(result, reference, s.dst_nodata)
        record(c.row(f"workflow: {name} ({s.method}, {dataset.header.crs.to_string()} -> EPSG:32632)"))
        assert c.compared > 1000 and c.nodata_mismatch == 0, c
        valid = reference[valid_mask(reference, s.dst_nodata)]
        assert c.max_abs_diff <= 1e-6 * float(np.abs(valid).max()), c


def test_stack_has_one_named_band_per_dataset_on_the_common_grid(run):
    plan, workdir = run["plan"], run["workdir"]
    with rasterio.open(workdir / "results" / "stack.tif") as stack:
        assert stack.descriptions == tuple(plan.datasets)  # config order
        assert stack.transform == plan.grid.transform and stack.crs == plan.grid.crs
        assert stack.dtypes[0] == "float32" and math.isnan(stack.nodata)  # mixed types -> real + NaN
        for i, name in enumerate(plan.datasets, 1):
            assert stack.tags(i)["method"] == plan.datasets[name].settings.method  # as the mosaics carry it
            band = stack.read(i)
            with rasterio.open(workdir / "results" / "mosaics" / f"{name}.tif") as mosaic:
                values = mosaic.read(1).astype("float64")
                valid = valid_mask(values, mosaic.nodata)
            assert np.array_equal(np.isnan(band), ~valid), name  # each dataset's nodata became NaN
            np.testing.assert_array_equal(band[valid], values[valid].astype("float32"))


def test_outputs_logs_and_benchmarks_exist_and_no_temporary_file_is_left(run):
    plan, workdir = run["plan"], run["workdir"]
    for name, dataset in plan.datasets.items():
        tiles = sorted(os.listdir(workdir / "results" / "tiles" / name))
        assert tiles == sorted(f"{t}.tif" for t in dataset.tiles)
        for b in dataset.batches:
            assert (workdir / "benchmarks" / "resample_batch" / name / f"{b.id}.tsv").exists()
            assert (workdir / "results" / "batches" / name / f"{b.id}.json").exists()
            text = (workdir / "logs" / "resample_batch" / name / f"{b.id}.log").read_text()
            for t in b.tiles:  # one line per tile made
                assert len(re.findall(rf"tile {t} done in", text)) == 1, (t, text)
        with rasterio.open(workdir / "results" / "tiles" / name / f"{dataset.tiles[0]}.tif") as tile:
            assert tile.profile["tiled"] and tile.profile["compress"] == "zstd"
            assert tile.nodata == dataset.settings.dst_nodata or math.isnan(tile.nodata)
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(workdir / "results") for f in files
                 if f.startswith(".tmp-")]
    assert leftovers == []


def test_plan_command_shows_tiles_batches_and_tiles_on_disk(run):
    workdir, plan = run["workdir"], run["plan"]
    proc = subprocess.run([sys.executable, "-m", "workflow_lib", "plan", "--json"], cwd=workdir, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    rows = {r["dataset"]: r for r in json.loads(proc.stdout)}
    assert list(rows) == list(plan.datasets)
    for name, d in plan.datasets.items():
        on_disk = len(os.listdir(workdir / "results" / "tiles" / name))
        assert (rows[name]["tiles"], rows[name]["batches"], rows[name]["tiles_on_disk"]) == \
            (d.tile_count, len(d.batches), on_disk)
        assert rows[name]["source_pixels"] == plan.estimated_work(name)
    text = subprocess.run([sys.executable, "-m", "workflow_lib", "plan"], cwd=workdir, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": REPO}).stdout
    assert "batches" in text and "on disk" in text and all(name in text for name in plan.datasets), text
    bad = subprocess.run([sys.executable, "-m", "workflow_lib", "plan", "--config", "missing.yaml"], cwd=workdir,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert bad.returncode == 1 and "missing.yaml" in bad.stderr and "Traceback" not in bad.stderr


def test_results_and_version_commands(run):
    """`results --json` lists what `results` prints; sizes below 0.1 MB are not "0.0 MB"."""
    workdir, plan = run["workdir"], run["plan"]
    env = {**os.environ, "PYTHONPATH": REPO}

    def command(*args):
        proc = subprocess.run([sys.executable, "-m", "workflow_lib", *args], cwd=workdir, capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    data = json.loads(command("results", "--json"))
    assert [m["path"] for m in data["mosaics"]] == [f"results/mosaics/{n}.tif" for n in sorted(plan.datasets)]
    assert data["stack"]["bands"] == list(plan.datasets) and data["stack"]["crs"] == "EPSG:32632"
    assert sorted(s["name"] for s in data["statistics"]) == sorted(plan.datasets)
    text = command("results")
    assert "0.0 MB" not in text and all(m["path"] in text for m in data["mosaics"])
    assert re.match(r"onegrid \d+\.\d+\.\d+ \(Snakemake [\d.]+, rasterio [\d.]+, GDAL [\d.]+\)$", command("--version"))
    # --config on every verb that reads the config (status, results and dashboard: its database.url).
    assert "status database: sqlite:///results/status.sqlite" in command("status", "--config", "config/config.yaml")
    missing = subprocess.run([sys.executable, "-m", "workflow_lib", "results", "--config", "nope.yaml"], cwd=workdir,
                             capture_output=True, text=True, env=env, timeout=120)
    assert (missing.returncode, missing.stderr) == (1, "Error: --config nope.yaml: no such file\n")
    for verb in ("results", "plan", "status", "dashboard", "run", "pause", "resume", "stop", "logs"):
        text = command(verb, "--help")
        assert text.split("\n\n")[1].strip()[:1].isupper(), verb  # its summary, then options
        assert f"examples:\n  onegrid {verb}" in text, verb
    g = plan.grid
    assert command("plan").startswith(f"target grid: {g.width} x {g.height} px (width x height) in EPSG:32632, "
                                      f"pixel 40 x 40; tiles of 48 px: {g.tile_cols} x {g.tile_rows} (columns x rows)")


def tile_times(workdir, name):
    folder = workdir / "results" / "tiles" / name
    return {f: os.stat(folder / f).st_mtime_ns for f in os.listdir(folder)}


def test_second_run_has_nothing_to_do_and_missing_tiles_alone_are_remade(run):
    workdir, plan = run["workdir"], run["plan"]
    again = snakemake(workdir, "--cores", "2")
    assert "Nothing to be done" in again.stdout + again.stderr
    # As after a stop during the tile jobs: some tiles done, two not, no mosaic or stack yet.
    dem_tiles = plan.datasets["dem"].tiles
    for t in dem_tiles[:2]:
        os.unlink(workdir / "results" / "tiles" / "dem" / f"{t}.tif")
    os.unlink(workdir / "results" / "mosaics" / "dem.tif")
    os.unlink(workdir / "results" / "stack.tif")
    before = tile_times(workdir, "dem")
    resumed = snakemake(workdir, "--cores", "2")
    text = resumed.stdout + resumed.stderr
    batches = {b.id for b in plan.datasets["dem"].batches if set(b.tiles) & set(dem_tiles[:2])}
    assert re.search(rf"resample_batch\s+{len(batches)}\b", text) and re.search(r"mosaic\s+1\b", text), text
    after = tile_times(workdir, "dem")
    assert set(after) == {f"{t}.tif" for t in dem_tiles}
    assert {f: after[f] for f in before} == before  # complete tiles were not computed again
    logs = "".join((workdir / "logs" / "resample_batch" / "dem" / f"{b}.log").read_text() for b in batches)
    assert sorted(re.findall(r"tile (r\d+_c\d+) done in", logs)) == sorted(t.id for t in dem_tiles[:2])


def test_a_rerun_batch_keeps_its_finished_tiles(run):
    """Snakemake deletes a job's outputs before it runs it again: the tiles are not among them."""
    workdir, plan = run["workdir"], run["plan"]
    before = {name: tile_times(workdir, name) for name in plan.datasets}
    proc = snakemake(workdir, "--cores", "2", "--forcerun", "resample_batch")
    text = proc.stdout + proc.stderr
    assert re.search(rf"resample_batch\s+{plan.batch_count}\b", text), text
    assert {name: tile_times(workdir, name) for name in plan.datasets} == before
    for name, d in plan.datasets.items():
        for b in d.batches:
            log_text = (workdir / "logs" / "resample_batch" / name / f"{b.id}.log").read_text()
            assert f"{len(b.tiles)} on disk with the current settings, 0 to make" in log_text, log_text


def test_a_changed_method_remakes_that_dataset_alone(run, record):
    """Each tile carries a digest of the settings it was made with: a dataset whose method changed
    has all its tiles made again, with the new method; the other datasets keep theirs."""
    workdir, plan = run["workdir"], run["plan"]
    before = {name: tile_times(workdir, name) for name in plan.datasets}
    config = yaml.safe_load(open(workdir / "config" / "config.yaml"))
    config["datasets"]["landcover"]["method"] = "nearest"
    write_config(workdir, config)
    # The dry run counts the tiles made with the old method as tiles to make, not only missing ones.
    dry = snakemake(workdir, "-n", "--cores", "2")
    listed = re.findall(r"resample batch (b[\d_x]+) of landcover: .*, (\d+) of (\d+) tiles to make",
                        dry.stdout + dry.stderr)
    assert sorted(b for b, *_ in listed) == sorted(b.id for b in plan.datasets["landcover"].batches), dry.stdout
    assert all(todo == total for _, todo, total in listed), listed
    proc = snakemake(workdir, "--cores", "2")
    text = proc.stdout + proc.stderr
    assert re.search(rf"resample_batch\s+{len(plan.datasets['landcover'].batches)}\b", text), text
    after = {name: tile_times(workdir, name) for name in plan.datasets}
    for name in plan.datasets:
        if name == "landcover":
            assert set(after[name]) == set(before[name])
            assert all(after[name][f] != before[name][f] for f in before[name]), "every tile made again"
        else:
            assert after[name] == before[name], name
    new_plan = build_plan(validate_config(config))
    with rasterio.open(workdir / "results" / "mosaics" / "landcover.tif") as src:
        assert src.tags(1)["method"] == "nearest"
        c = compare(src.read(1), reference_for(new_plan, "landcover").data, new_plan.datasets["landcover"].settings.dst_nodata)
    record(c.row("workflow: landcover after its method changed to nearest"))
    assert c.compared > 1000 and c.max_abs_diff == 0 and c.nodata_mismatch == 0, c


def status_of(workdir) -> dict:
    proc = subprocess.run([sys.executable, "-m", "workflow_lib", "status", "--json"], cwd=workdir, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def output_times(workdir) -> dict[str, int]:
    """Every file under results/ but the status database and its spool, with its modification time."""
    root = workdir / "results"
    times = {}
    for d, folders, files in os.walk(root):
        folders[:] = [f for f in folders if not f.startswith(".")]
        for f in files:
            if not f.startswith((".", "status.sqlite")):
                times[os.path.relpath(os.path.join(d, f), root)] = os.stat(os.path.join(d, f)).st_mtime_ns
    return times


@pytest.mark.parametrize("deleted,remade", [
    # A tile: its batch makes it alone (and its chunk in the Zarr store), then its dataset's mosaic,
    # what is made from the mosaics, the store's consolidated metadata and the run's summary (every
    # quicklook, the report's pages and the STAC catalog: one job).
    (["tiles/dem/r0001_c0001.tif"],
     ["batches/dem/<the tile's batch>", "mosaics/dem.tif", "statistics/dem.json", "stack.tif",
      "stack.zarr/dem/c/1/1", "stack.zarr/zarr.json", "report/*", "stac/*"]),
    # A mosaic, a statistics file, the stack, report pages: each remade with what depends on it.
    (["mosaics/landcover.tif", "statistics/temperature.json", "stack.tif", "report/config.html",
      "report/quicklooks/dem.png"],
     ["mosaics/landcover.tif", "statistics/landcover.json", "mosaics/temperature.tif", "statistics/temperature.json",
      "stack.tif", "report/*", "stac/*"]),
    # A dataset's record: its register job runs again (keeping its array in the store, whose chunks
    # are still right), its batches find their tiles (and chunks) on disk.
    (["datasets/dem.json"],
     ["datasets/dem.json", "batches/dem/*", "mosaics/dem.tif", "statistics/dem.json", "stack.tif",
      "stack.zarr/zarr.json", "report/*", "stac/*"]),
], ids=["tile", "mosaic-statistics-stack-report", "dataset-record"])
def test_a_deleted_output_is_remade_with_what_depends_on_it_and_nothing_else(run, deleted, remade):
    workdir, plan = run["workdir"], run["plan"]
    [batch] = [b.id for b in plan.datasets["dem"].batches if "r0001_c0001" in b.tile_ids]
    remade = [r.replace("<the tile's batch>", f"{batch}.json") for r in remade]
    assert status_of(workdir)["complete"]
    before = output_times(workdir)
    for path in deleted:
        os.unlink(workdir / "results" / path)
    status = status_of(workdir)
    assert not status["complete"] and status["missing"], status
    assert {f"results/{d}" for d in deleted if not d.startswith("tiles/")} <= set(status["missing"])
    tile_deleted = "tiles/dem/r0001_c0001.tif" in deleted
    assert any("1 of" in m and "tiles of dem" in m for m in status["missing"]) == tile_deleted
    snakemake(workdir, "--cores", "2")
    after = output_times(workdir)
    assert set(after) == set(before), set(before) ^ set(after)
    changed = {f for f in before if after[f] != before[f]}
    expected = {f for f in before if any(f == r or (r.endswith("/*") and f.startswith(r[:-1])) for r in remade)}
    assert changed == expected | set(deleted), (sorted(changed - expected - set(deleted)),
                                                  sorted(expected | set(deleted) - changed))
    assert status_of(workdir)["complete"]


def test_lint_reports_nothing(run):
    proc = snakemake(run["workdir"], "--lint")
    text = proc.stdout + proc.stderr
    assert "Lints for" not in text, text


def test_dag_and_rulegraph_render(run):
    for flag in ("--dag", "--rulegraph"):
        dot_text = snakemake(run["workdir"], flag).stdout
        assert dot_text.lstrip().startswith("digraph"), dot_text[:500]
        if shutil.which("dot") is None:
            if os.environ.get("CI"):
                pytest.fail("graphviz 'dot' must be installed in CI (.ci/run installs it)")
            pytest.skip("graphviz 'dot' not installed: rendering not checked")
        svg = subprocess.run(["dot", "-Tsvg"], input=dot_text, capture_output=True, text=True, check=True).stdout
        assert "<svg" in svg and "resample_batch" in svg


def test_bad_config_fails_before_any_job_naming_the_key(tmp_path):
    config = synthetic_config(tmp_path)
    config["datasets"]["dem"]["method"] = "bicubic"
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "datasets.dem.method: 'bicubic' is not one of" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("crs,message", [
    ("EPSG:999999", "target.crs: cannot parse 'EPSG:999999'"),
    ("EPSG:4326", "target.resolution: 100 x 100 degrees makes one pixel larger than the whole extent"),
])
def test_a_config_error_is_one_clear_message_without_python_frames(tmp_path, crs, message):
    """No traceback, no file and line of the Snakefile, no raw GDAL/PROJ line (ERROR 1: PROJ: ...)."""
    config = synthetic_config(tmp_path)
    config["target"].update(crs=crs, resolution=100)
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in text, text
    assert "File \"" not in text and "Traceback" not in text and "ERROR 1" not in text and ".smk" not in text, text


def test_the_readmes_own_data_config_gives_the_same_outputs_with_onegrid_run_and_snakemake(tmp_path):
    """README, "Your own data": its config, saved as config/mine.yaml beside the example's
    config/config.yaml, run with `onegrid run --config` in one folder and `snakemake --configfile`
    in another. Both plan its datasets alone (the example's are not merged in), make the outputs the
    README names, and the same pixels."""
    from workflow_lib.example import make_example

    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Your own data"):readme.index("## Commands")]
    mine = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    data = tmp_path / "data"
    make_example(str(data / "example"))
    folders = {how: tmp_path / how for how in ("onegrid", "snakemake")}
    for folder in folders.values():
        (folder / "config").mkdir(parents=True)
        shutil.copy(os.path.join(REPO, "config", "config.yaml"), folder / "config" / "config.yaml")
        (folder / "config" / "mine.yaml").write_text(mine)
        os.symlink(data, folder / "data")
    snakefile = ["--snakefile", os.path.join(REPO, "Snakefile")]
    control(folders["onegrid"], "run", "--config", "config/mine.yaml", "--", *snakefile, "--cores", "2", timeout=600)
    proc = subprocess.run([sys.executable, "-m", "snakemake", *snakefile, "--configfile", "config/mine.yaml",
                           "--cores", "2"], cwd=folders["snakemake"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    named = re.findall(r"`(results/[^`]+\.tif)`", section)
    assert named == ["results/mosaics/elevation.tif", "results/mosaics/land.tif", "results/stack.tif"], named
    for folder in folders.values():
        assert sorted(os.listdir(folder / "results" / "mosaics")) == ["elevation.tif", "land.tif"]
        with rasterio.open(folder / "results" / "stack.tif") as src:
            assert src.descriptions == ("elevation", "trees", "shrubs", "grassland") and src.crs.to_epsg() == 2056
    assert results_digests(folders["onegrid"]) == results_digests(folders["snakemake"])
    # What the README says plan shows: the engines and why, and the global layer clipped.
    plan = control(folders["onegrid"], "plan", "--config", "config/mine.yaml").stdout
    assert "engine of land: conservative (class fractions: areas of footprints)" in plan, plan
    assert "note: dataset land: data/example/landcover_global.tif reaches beyond where EPSG:2056 is defined" in plan
    # Class shares are within 0..1, and the statistics count every band's pixels.
    with rasterio.open(folders["onegrid"] / "results" / "mosaics" / "land.tif") as src:
        shares = src.read()
    assert np.nanmin(shares) >= 0 and np.nanmax(shares) <= 1 + 1e-6
    with open(folders["onegrid"] / "results" / "statistics" / "land.json") as f:
        assert 0 < json.load(f)["valid_share"] <= 1
    # The Zarr store's overview levels (1/2, 1/4, 1/8 on this grid, made by the batch job with the
    # chunks): block means of the mosaics' full-resolution pixels, each band of the fractions too.
    xr = pytest.importorskip("xarray")
    out = folders["snakemake"]
    store = out / "results" / "stack.zarr"
    layout = xr.open_zarr(store).attrs["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == ["elevation", "overviews/2", "overviews/4", "overviews/8"], layout
    for f in (2, 8):
        level = xr.open_zarr(store, group=f"overviews/{f}")
        for name in ("elevation", "land"):
            got = level[name].values.astype("float64")
            got = got if got.ndim == 3 else got[np.newaxis]
            expected = level_reference(str(out / "results" / "mosaics" / f"{name}.tif"), f, False)
            assert np.allclose(got, expected, rtol=1e-6, atol=1e-7, equal_nan=True), (name, f)
    # A chunk of a level removed by hand: the next run reopens its batch, which writes the missing
    # parts from the tiles on disk (no tile is made again) and leaves the rest as it was.
    lost = store / "overviews" / "4" / "elevation" / "c" / "0" / "0"
    tiles = sorted((out / "results" / "tiles" / "elevation").iterdir())
    before = {t: t.stat().st_mtime_ns for t in tiles}
    os.unlink(lost)
    proc = subprocess.run([sys.executable, "-m", "snakemake", *snakefile, "--configfile", "config/mine.yaml",
                           "--cores", "2"], cwd=out, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lost.is_file() and {t: t.stat().st_mtime_ns for t in tiles} == before
    assert results_digests(folders["onegrid"]) == results_digests(out)


def test_a_union_extent_clipped_to_the_crs_area_of_use_is_said_in_the_dry_run_and_the_register_log(tmp_path):
    """A global layer onto a UTM zone: planning clips the union extent, and says so where users look."""
    path = write_raster(tmp_path / "g.tif", np.ones((180, 360), "float32"), "EPSG:4326",
                        Affine(1, 0, -180, 0, -1, 90), -9999.0)
    write_config(tmp_path, {"target": {"crs": "EPSG:32632", "resolution": 100000}, "tile_size": 16,
                            "datasets": {"g": {"path": path, "method": "average"}}})
    note = (f"note: dataset g: {path} reaches beyond where EPSG:32632 is defined: its part of the union extent is "
            "clipped to the CRS's area of use (lon 6..12, lat 0..84); set target.extent to choose another area")
    assert note in snakemake(tmp_path, "-n").stderr
    snakemake(tmp_path, "--cores", "1", "results/datasets/g.json")
    log = (tmp_path / "logs" / "register_dataset" / "g.log").read_text()
    assert note.removeprefix("note: ") in log and "WarpSettings(" not in log, log
    assert "settings method average, band 1, nodata -9999 -> -9999, float32" in log, log


def test_missing_input_fails_before_any_job_naming_dataset_and_path(tmp_path):
    config = synthetic_config(tmp_path)
    os.unlink(config["datasets"]["landcover"]["path"])
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert f"datasets.landcover.path: file not found: {config['datasets']['landcover']['path']}" in proc.stdout + proc.stderr


def test_an_output_folder_that_cannot_be_written_stops_the_run_in_one_line(tmp_path):
    """Said once before any job, not by each job in a traceback. A file named results/ stands for
    a read-only or full disk here: as root, permissions do not stop a test from writing."""
    write_config(tmp_path, synthetic_config(tmp_path))
    (tmp_path / "results").write_text("not a folder")
    proc = snakemake(tmp_path, "--cores", "1", check=False)
    assert proc.returncode == 1
    assert "Error: results/ cannot be written (a file, not a folder, has its name): the run writes its tiles, " \
           "mosaics and status there" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    dry = snakemake(tmp_path, "-n", check=False)  # the run it shows could not be made either
    assert dry.returncode == 1 and "Error: results/ cannot be written" in dry.stderr, dry.stderr


def test_real_overlapping_cogs_through_the_workflow(tmp_path, real_raster, record):
    """Two overlapping real COGs (slightly different pixel sizes, misaligned grids) and a third band,
    through snakemake onto one grid, each mosaic equal to GDAL's whole-image warp."""
    cog1, cog2 = real_raster("rio-tiler__mosaic_cog1.tif"), real_raster("rio-tiler__mosaic_cog2.tif")
    config = {
        "target": {"crs": "EPSG:32618", "resolution": 600},
        "tile_size": 64,
        "datasets": {
            "cog1_red": {"path": cog1, "method": "average", "band": 1},
            "cog2_red": {"path": cog2, "method": "average", "band": 1},
            "cog1_blue": {"path": cog1, "method": "med", "band": 3},
        },
    }
    write_config(tmp_path, config)
    snakemake(tmp_path, "--cores", "2", "--resources", "mem_mb=2000")
    plan = build_plan(validate_config(config))
    for name in config["datasets"]:
        with rasterio.open(tmp_path / "results" / "mosaics" / f"{name}.tif") as src:
            result = src.read(1)
        c = compare(result, reference_for(plan, name).data, plan.datasets[name].settings.dst_nodata)
        record(c.row(f"workflow real: {name}"))
        assert c.compared > 10000 and c.max_abs_diff == 0 and c.nodata_mismatch == 0, c
    with rasterio.open(tmp_path / "results" / "stack.tif") as stack:
        assert stack.descriptions == ("cog1_red", "cog2_red", "cog1_blue")
        assert stack.dtypes[0] == "uint16" and stack.nodata == 0  # all agree: kept as they are


if not os.path.isdir(REAL_DATA):
    test_real_overlapping_cogs_through_the_workflow = pytest.mark.skip(
        reason=f"real test rasters not found at {REAL_DATA}")(test_real_overlapping_cogs_through_the_workflow)
