"""The status database on SQLite and on a real PostgreSQL (started by the tests, see tests/pg.py)."""

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from affine import Affine

from workflow_lib.config import validate_config
from workflow_lib.planning.plan import build_plan
from workflow_lib.status import StatusStore, TileBeat
from workflow_lib.status.events import (DatasetRecorded, Note, RunFinished, RunStarted, TileFailed, TileFinished,
                                        TilesPlanned, TileStarted)
from workflow_lib.status.schema import CURRENT_VERSION
from workflow_lib.views.status import STALL_SECONDS, build_report, render, to_json

from .helpers import REPO, write_raster

WRITER = """
import sys, time
from workflow_lib.status import StatusStore
from workflow_lib.status.events import Note, TileMeasured
url, spool, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = StatusStore(url, spool_dir=spool)
for i in range(n):
    store.record(Note(run_id="load", dataset=f"w{worker}", tile=f"r{i:04d}_c0000", details={"i": i}))
    if i % 10 == 0:
        store.record(TileMeasured(dataset=f"w{worker}", tile="r0000_c0000", seconds=i))
store.close()
"""


def test_schema_is_migrated_once_with_its_version(store_url, tmp_path):
    for _ in range(2):
        store = StatusStore(store_url, spool_dir=str(tmp_path / "spool"))
        store.record(RunStarted(run_id="r1"))
        versions = store.query("SELECT version FROM schema_migrations ORDER BY version")
        assert versions == [(v,) for v in range(1, CURRENT_VERSION + 1)]
        store.close()
    assert StatusStore(store_url).query("SELECT COUNT(*) FROM runs") == [(1,)]


def test_quotes_and_sql_in_names_and_messages_are_stored_verbatim(store_url, tmp_path):
    name = "o'brien\"; DROP TABLE tiles; --"
    error = "it's \"broken\"'); DELETE FROM events WHERE ('1'='1"
    store = StatusStore(store_url, spool_dir=str(tmp_path / "spool"))
    store.record(TilesPlanned(run_id="r", dataset=name, tiles=[["r0000_c0000", "pending"]]))
    store.record(TileStarted(run_id="r", dataset=name, tile="r0000_c0000"))
    store.record(TileFailed(run_id="r", dataset=name, tile="r0000_c0000", error=error))
    assert store.query("SELECT dataset, status, error FROM tiles") == [(name, "failed", error)]
    assert store.query("SELECT COUNT(*) FROM events") == [(3,)]


def test_eight_concurrent_writers_lose_no_event(store_url, tmp_path, record):
    workers, per_worker = 8, 1000
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, store_url, str(tmp_path / "spool"), str(w),
                               str(per_worker)], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()
    elapsed = time.monotonic() - started
    store = StatusStore(store_url)
    notes = store.query("SELECT COUNT(*) FROM events WHERE kind = 'note'")[0][0]
    measured = store.query("SELECT COUNT(*) FROM events WHERE kind = 'tile_measured'")[0][0]
    distinct = store.query("SELECT COUNT(DISTINCT dataset || '/' || tile) FROM events WHERE kind = 'note'")[0][0]
    spooled = os.listdir(tmp_path / "spool") if os.path.exists(tmp_path / "spool") else []
    backend = store_url.split(":")[0]
    record(f"status {backend:<10} {workers} writers x {per_worker + per_worker // 10} events: "
           f"{notes + measured} stored in {elapsed:.1f} s ({(notes + measured) / elapsed:.0f}/s), "
           f"spooled {len(spooled)}")
    assert notes == workers * per_worker and distinct == workers * per_worker
    assert measured == workers * per_worker // 10
    assert store.query("SELECT COUNT(*), MAX(seconds) FROM tiles") == [(workers, 990.0)]


def test_unreachable_database_spools_events_and_replays_them(pg_cluster, tmp_path, caplog, record, monkeypatch):
    # Straight back to the database once it is up (the pause after a failure is tested below).
    monkeypatch.setattr("workflow_lib.status.store.RETRY_AFTER_S", 0.0)
    url = pg_cluster.new_database().replace("postgres@", "postgres:secret-password@")
    spool = str(tmp_path / "spool")
    store = StatusStore(url, spool_dir=spool)
    store.record(RunStarted(run_id="r"))
    pg_cluster.stop()
    try:
        with caplog.at_level(logging.WARNING):
            reached = [store.record(Note(run_id="r", details={"i": i})) for i in range(300)]
        assert not any(reached)
        assert len(os.listdir(spool)) == 1
    finally:
        pg_cluster.start()
    warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "spooled" in warnings[0]
    assert "secret-password" not in caplog.text
    assert store.record(Note(run_id="r", details={"i": 300}))  # replays the spool first
    assert store.query("SELECT COUNT(*) FROM events WHERE kind = 'note'") == [(301,)]
    assert os.listdir(spool) == []
    record("status postgresql outage: 300 events spooled while the server was down, 301/301 present after restart")


def test_replaying_the_same_spool_twice_applies_each_event_once(tmp_path):
    url = f"sqlite:///{tmp_path}/s.sqlite"
    spool = tmp_path / "spool"
    spool.mkdir()
    events = [TileStarted(run_id="r", dataset="d", tile="r0000_c0000") for _ in range(3)]
    line = "".join(json.dumps(e.to_record()) + "\n" for e in events)
    (spool / "spool-a-1.jsonl").write_text(line + '{"kind": "trunc')  # a writer died mid-line
    (spool / "spool-b-2.jsonl").write_text(line)  # the same events again
    store = StatusStore(url, spool_dir=str(spool))
    store.replay()
    assert store.query("SELECT attempt, status FROM tiles") == [(3, "running")]
    assert store.query("SELECT COUNT(*) FROM events") == [(3,)]


def test_report_shows_progress_eta_and_flags_stalled_jobs(tmp_path):
    store = StatusStore(f"sqlite:///{tmp_path}/s.sqlite")
    t0 = 1_000_000.0
    store.record(RunStarted(run_id="r", at=t0))
    store.record(TilesPlanned(run_id="r", dataset="dem", at=t0,
                              tiles=[[f"r0000_c{i:04d}", "pending"] for i in range(10)]))
    for i in range(4):
        store.record(TileStarted(run_id="r", dataset="dem", tile=f"r0000_c{i:04d}", at=t0 + 60 * i))
        store.record(TileFinished(run_id="r", dataset="dem", tile=f"r0000_c{i:04d}", at=t0 + 60 * i + 60))
    store.record(TileStarted(run_id="r", dataset="dem", tile="r0000_c0004", at=t0 + 240))
    store.record(TileStarted(run_id="r", dataset="dem", tile="r0000_c0005", at=t0 + 240))
    store.record(TileFailed(run_id="r", dataset="dem", tile="r0000_c0005", at=t0 + 250,
                            error="InputRasterError: dataset 'dem' (a.tif): read failed"))
    now = t0 + 240 + STALL_SECONDS + 1
    report = build_report(store, now=now)
    d = report.datasets[0]
    assert (d.total, d.done, d.running, d.failed, d.pending) == (10, 4, 1, 1, 4)
    assert d.tiles_per_minute == pytest.approx(4 / ((now - t0) / 60))
    assert d.eta_seconds == pytest.approx(6 / d.tiles_per_minute * 60)
    assert report.running[0]["stalled"] and report.running[0]["tile"] == "r0000_c0004"
    text = render(report)
    assert "STALLED" in text and "read failed" in text and "[########" in text
    assert "no heartbeat yet" in text and "none ago" not in text  # the job has not beaten yet
    assert json.loads(to_json(report))["datasets"][0]["done"] == 4


def test_a_failed_job_is_explained_by_its_logs_out_of_memory_kill_first(tmp_path):
    from workflow_lib.status.run import error_from_logs

    job = tmp_path / "job.log"
    job.write_text("2026-11-29 INFO workflow_lib.resample: tile r0000_c0000 of dem: 750x750 px\n")
    slurm = tmp_path / "slurm.log"
    slurm.write_text(  # as SLURM's output of a job step killed by its cgroup reads
        "Job 0: resample results/tiles/dem/r0000_c0000.tif with the gdal-warp engine\n"
        "slurmstepd-localhost: error: Detected 1 oom-kill event(s) in StepId=35.0. Some of your processes may have "
        "been killed by the cgroup out-of-memory handler.\n"
        "srun: error: localhost: task 0: Out Of Memory\nWorkflowError:\nAt least one job did not complete successfully.\n")
    assert error_from_logs([str(job), str(slurm)]).startswith("slurmstepd-localhost: error: Detected 1 oom-kill")
    failed = tmp_path / "failed.log"
    failed.write_text("Traceback (most recent call last):\nInputRasterError: dataset 'd' (a.tif): read failed\n")
    assert error_from_logs([str(job), str(failed)]) == "InputRasterError: dataset 'd' (a.tif): read failed"
    assert error_from_logs([str(job)]).startswith("the job ended without an error message")


def test_eta_is_weighted_by_each_tiles_estimated_work_and_running_progress(store_url):
    """Ten tiles, the last five edge tiles with a tenth of the work: after the five big ones took
    100 s each, the rest is 5 x 0.1 of that work, not five more 100 s. On both backends, with what
    the dashboard reads of the same run."""
    from workflow_lib.views.dashboard import state

    store = StatusStore(store_url)
    t0 = 1_000_000.0
    store.record(RunStarted(run_id="r", at=t0))
    work = [1000.0] * 5 + [100.0] * 5
    store.record(TilesPlanned(run_id="r", dataset="dem", at=t0,
                              tiles=[[f"r0000_c{i:04d}", "pending", "b0", w] for i, w in enumerate(work)]))
    for i in range(5):
        store.record(TileStarted(run_id="r", dataset="dem", tile=f"r0000_c{i:04d}", at=t0 + 100 * i, batch="b0",
                                 mem_mb=512))
        store.record(TileFinished(run_id="r", dataset="dem", tile=f"r0000_c{i:04d}", at=t0 + 100 * i + 100))
    now = t0 + 500
    d = build_report(store, now=now).datasets[0]
    assert (d.work_total, d.work_done) == (5500.0, 5000.0)
    assert d.eta_seconds == pytest.approx(500 / (5000 / 500))  # 50 s, where counting tiles says 500 s
    assert d.tiles_per_minute == pytest.approx(5 / (500 / 60))
    # A running tile half done: its half counts as done, in the share and in the rate.
    store.record(TileStarted(run_id="r", dataset="dem", tile="r0000_c0005", at=now, batch="b0", mem_mb=512))
    store.heartbeat("dem", [TileBeat("r0000_c0005", 0.5, 12345)], rss_mb=300.0)
    report = build_report(store, now=now + 5)
    d = report.datasets[0]
    assert d.work_done == 5050.0 and d.work_share == pytest.approx(5050 / 5500)
    assert d.eta_seconds == pytest.approx(450 / (5050 / 505))
    assert report.eta_seconds == pytest.approx(d.eta_seconds) and report.work_share == pytest.approx(d.work_share)
    [job] = report.jobs
    assert (job["dataset"], job["batch"], job["tiles"], job["done"], job["running"]) == ("dem", "b0", 10, 5, 1)
    assert job["progress"] == pytest.approx(0.55) and (job["rss_mb"], job["mem_mb"]) == (300.0, 512)
    assert store.query("SELECT progress, pixels_read, rss_mb FROM tiles WHERE tile = 'r0000_c0005'") == \
        [(0.5, 12345, 300.0)]
    text = render(report)
    assert "running jobs:" in text and "dem b0 on" in text and "5.5 of 10 tiles, RSS 300 of 512 MB" in text
    assert "91.8 % of the estimated work done" in text and ", 50 %," in text
    page = state(StatusStore(store_url, read_only=True), now=now + 5)
    assert page["grids"]["dem"]["states"] == "dddddrpppp" and page["grids"]["dem"]["running"] == {"r0000_c0005": 0.5}
    assert page["throughput"]["tiles"][:100] and sum(page["throughput"]["tiles"]) == 5
    assert page["report"]["jobs"][0]["progress"] == pytest.approx(0.55)


def test_a_read_only_store_reads_and_never_writes(tmp_path):
    url = f"sqlite:///{tmp_path}/s.sqlite"
    assert StatusStore(url, read_only=True).schema_version() == 0  # no database yet: nothing is created
    assert not (tmp_path / "s.sqlite").exists()
    writer = StatusStore(url)
    writer.record(RunStarted(run_id="r"))
    writer.close()
    before = (tmp_path / "s.sqlite").read_bytes()
    reader = StatusStore(url, read_only=True)
    assert reader.schema_version() == CURRENT_VERSION and reader.query("SELECT id FROM runs") == [("r",)]
    with pytest.raises(RuntimeError):
        reader.record(RunStarted(run_id="s"))
    import sqlite3

    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.query("DELETE FROM runs")
    reader.close()
    assert (tmp_path / "s.sqlite").read_bytes() == before


def test_a_read_only_store_on_postgresql_is_refused_writes_by_the_server(pg_cluster):
    import psycopg

    url = pg_cluster.new_database()
    StatusStore(url).record(RunStarted(run_id="r"))
    reader = StatusStore(url, read_only=True)
    assert reader.schema_version() == CURRENT_VERSION and reader.query("SELECT id FROM runs") == [("r",)]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        reader.query("DELETE FROM runs")
    reader.close()
    assert StatusStore(url).query("SELECT id FROM runs") == [("r",)]


def test_a_resumed_runs_rate_counts_only_the_tiles_it_made(tmp_path):
    store = StatusStore(f"sqlite:///{tmp_path}/s.sqlite")
    tiles = [[f"r0000_c{i:04d}", "pending", "b0", 100.0] for i in range(4)]
    store.record(RunStarted(run_id="r1", at=1000.0))
    store.record(TilesPlanned(run_id="r1", dataset="dem", at=1000.0, tiles=tiles))
    store.record(TileStarted(run_id="r1", dataset="dem", tile="r0000_c0000", at=1000.0))
    store.record(TileFinished(run_id="r1", dataset="dem", tile="r0000_c0000", at=1010.0))
    store.record(RunFinished(run_id="r1", at=1011.0, status="paused"))
    # A day later: the tile made before is planned as done in the new run.
    tiles[0][1] = "done"
    store.record(RunStarted(run_id="r2", at=90000.0))
    store.record(TilesPlanned(run_id="r2", dataset="dem", at=90000.0, tiles=tiles))
    store.record(TileStarted(run_id="r2", dataset="dem", tile="r0000_c0001", at=90000.0))
    store.record(TileFinished(run_id="r2", dataset="dem", tile="r0000_c0001", at=90010.0))
    report = build_report(store, now=90010.0)
    assert report.eta_seconds == pytest.approx(20.0)  # two tiles of 10 s left, not two days'


def _plugin_record(event, **attributes):
    record = logging.LogRecord("snakemake", logging.ERROR if event == "job_error" else logging.INFO, __file__, 0,
                               "", None, None)
    record.event = event
    for key, value in attributes.items():
        setattr(record, key, value)
    return record


def _plugin(tmp_path, monkeypatch):
    """The status logger plugin in a folder with a run context, as Snakemake's main process has it:
    (the plugin, the database URL, the planned raster)."""
    from types import SimpleNamespace

    from snakemake_logger_plugin_tilestatus import LogHandler
    from workflow_lib.status.run import RUN_CONTEXT, write_run_context

    monkeypatch.chdir(tmp_path)
    path = write_raster(tmp_path / "dem.tif", np.ones((40, 40), "float32"), "EPSG:32632",
                        Affine(10, 0, 500000, 0, -10, 5200000), -9999.0)
    plan = build_plan(validate_config({"target": {"crs": "EPSG:32632", "resolution": 20}, "tile_size": 16,
                                       "datasets": {"dem": {"path": path, "method": "average"}}}))
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    url = f"sqlite:///{tmp_path}/status.sqlite"
    write_run_context("plan.json", url, "spool")
    assert os.path.exists(RUN_CONTEXT)
    return LogHandler(SimpleNamespace(dryrun=False), None), url, path


def test_a_failed_registration_keeps_the_datasets_facts_and_shows_its_error(tmp_path, monkeypatch):
    """The status logger plugin, driven as Snakemake drives it: a register job fails. The dataset's
    row keeps what the plan knows of it (path, CRS, size, nodata), its error is stored, and the
    status report and the dashboard show it."""
    from snakemake_interface_logger_plugins.common import LogEvent
    from workflow_lib.status.run import REGISTER_RULE
    from workflow_lib.views.dashboard import state

    handler, url, path = _plugin(tmp_path, monkeypatch)
    error = f"InputRasterError: dataset 'dem' ({path}): the file changed after the workflow was planned"
    (tmp_path / "register.log").write_text(f"2026-12-06 INFO planning\n{error}\n")

    handler.emit(_plugin_record(LogEvent.WORKFLOW_STARTED, workflow_id="run-1"))
    handler.emit(_plugin_record(LogEvent.JOB_INFO, jobid=1, rule_name=REGISTER_RULE, wildcards={"dataset": "dem"},
                                log=[str(tmp_path / "register.log")]))
    handler.emit(_plugin_record(LogEvent.JOB_ERROR, jobid=1, rule_name=REGISTER_RULE))
    handler.close()

    store = StatusStore(url)
    [(status, stored_path, crs, width, height, nodata, stored_error)] = store.query(
        "SELECT status, path, crs, width, height, nodata, error FROM datasets WHERE name = 'dem'")
    assert (status, stored_path, crs, width, height, nodata) == ("failed", path, "EPSG:32632", 40, 40, "-9999.0")
    assert error in stored_error
    report = build_report(store)
    assert report.datasets[0].error == stored_error and not report.complete
    assert f"dem: {stored_error}" in render(report)
    page = state(StatusStore(url, read_only=True))
    assert page["report"]["datasets"][0]["error"] == stored_error


def test_a_failure_spooled_by_an_older_version_is_replayed_as_a_failure(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    store = StatusStore(f"sqlite:///{tmp_path}/s.sqlite", spool_dir=str(spool))
    store.record(DatasetRecorded(run_id="r", dataset="dem", status="planned", path="dem.tif", crs="EPSG:32632"))
    # As the version before typed events spooled it: a "dataset" event whose status is "failed".
    old = {"kind": "dataset", "run_id": "r", "dataset": "dem", "tile": None, "id": "x1", "at": 1.0, "host": "h",
           "pid": 1, "payload": {"status": "failed", "error": "it broke"}}
    (spool / "spool-h-1.jsonl").write_text(json.dumps(old) + "\n")
    store.replay()
    assert store.query("SELECT status, path, crs, error FROM datasets") == [("failed", "dem.tif", "EPSG:32632",
                                                                            "it broke")]


def test_all_tiles_done_is_not_complete_while_the_run_goes_on_or_an_output_is_missing(tmp_path):
    """The mosaics, the stack and the report come after the tiles: `status` says complete only once
    the run is over and every output of the run's plan is on disk."""
    store = StatusStore(f"sqlite:///{tmp_path}/status.sqlite")
    store.record(RunStarted(run_id="r"))
    store.record(TilesPlanned(run_id="r", dataset="dem", tiles=[["r0000_c0000", "pending", "b", 1]]))
    store.record(TileStarted(run_id="r", dataset="dem", tile="r0000_c0000"))
    store.record(TileFinished(run_id="r", dataset="dem", tile="r0000_c0000"))
    going_on = build_report(store, workdir=str(tmp_path))
    assert going_on.tiles_done and not going_on.complete
    assert "the run goes on with the mosaics" in render(going_on) and "complete" not in render(going_on)
    store.record(RunFinished(run_id="r"))
    # No run of the workflow in this folder: nothing to look for on disk.
    assert build_report(store, workdir=str(tmp_path)).complete
    assert build_report(store).complete


def test_status_counts_the_tiles_of_the_current_plan_only(tmp_path):
    """After tile_size changes, the next run plans other tiles: the earlier plan's are not counted."""
    store = StatusStore(f"sqlite:///{tmp_path}/status.sqlite")
    store.record(RunStarted(run_id="r1"))
    store.record(TilesPlanned(run_id="r1", dataset="dem", tiles=[[f"r0000_c{c:04d}", "pending", "b", 1]
                                                                 for c in range(12)]))
    store.record(TileStarted(run_id="r1", dataset="dem", tile="r0000_c0000"))
    store.record(TileFinished(run_id="r1", dataset="dem", tile="r0000_c0000"))
    store.record(TilesPlanned(run_id="r1", dataset="other", tiles=[["r0000_c0000", "pending", "b", 1]]))
    store.record(RunFinished(run_id="r1"))
    store.record(RunStarted(run_id="r2"))
    store.record(TilesPlanned(run_id="r2", dataset="dem", tiles=[["r0000_c0000", "done", "b", 4],
                                                                 ["r0000_c0001", "pending", "b", 4]]))
    [dem, other] = sorted(build_report(store).datasets, key=lambda d: d.name)
    assert (dem.total, dem.done, dem.pending) == (2, 1, 1)
    assert other.total == 1  # not planned again by this run: kept as it was


def test_a_snakemake_refused_the_lock_records_nothing(tmp_path, monkeypatch):
    """A second Snakemake in the folder of a running one is refused its lock after WORKFLOW_STARTED:
    it must not record a run, nor its plan's tiles, nor end the real run's row."""
    from snakemake_interface_logger_plugins.common import LogEvent

    handler, url, _ = _plugin(tmp_path, monkeypatch)
    handler.emit(_plugin_record(LogEvent.WORKFLOW_STARTED, workflow_id="refused"))
    refusal = _plugin_record("error")
    refusal.levelno, refusal.msg, refusal.event = logging.ERROR, (
        "Error: Directory cannot be locked. Please make sure that no other Snakemake process is trying to create "
        "the same files in the following directory:"), None
    handler.emit(refusal)
    handler.close()
    assert StatusStore(url).query("SELECT COUNT(*) FROM runs") == [(0,)]
    assert StatusStore(url).query("SELECT COUNT(*) FROM tiles") == [(0,)]
    # A run that holds the lock is recorded from its first sign of work.
    handler, _, _ = _plugin(tmp_path, monkeypatch)
    handler.emit(_plugin_record(LogEvent.WORKFLOW_STARTED, workflow_id="real"))
    handler.emit(_plugin_record(LogEvent.RUN_INFO, stats={}))
    assert StatusStore(url).query("SELECT id, status FROM runs") == [("real", "running")]
    handler.close()
    assert StatusStore(url).query("SELECT id, status FROM runs") == [("real", "finished")]


def test_a_run_whose_process_is_gone_is_interrupted_without_an_eta(tmp_path):
    """Killed with SIGKILL, a run cannot say it ended: `status` finds its process gone, shows it as
    interrupted with no ETA, and stores it so (its running tiles pending again)."""
    url = f"sqlite:///{tmp_path}/status.sqlite"
    script = (
        "import sys, psutil, time\n"
        "from workflow_lib.status import StatusStore\n"
        "from workflow_lib.status.events import RunStarted, TilesPlanned, TileStarted, TileFinished\n"
        "s = StatusStore(sys.argv[1])\n"
        "s.record(RunStarted(run_id='r', process_started_at=psutil.Process().create_time(), at=time.time() - 60))\n"
        "s.record(TilesPlanned(run_id='r', dataset='dem', tiles=[['r0000_c0000', 'pending', 'b', 1],"
        " ['r0000_c0001', 'pending', 'b', 1], ['r0000_c0002', 'pending', 'b', 1]]))\n"
        "s.record(TileStarted(run_id='r', dataset='dem', tile='r0000_c0000', at=time.time() - 50))\n"
        "s.record(TileFinished(run_id='r', dataset='dem', tile='r0000_c0000', at=time.time() - 40))\n"
        "s.record(TileStarted(run_id='r', dataset='dem', tile='r0000_c0001', at=time.time() - 30))\n"
        "s.close()\n")
    subprocess.run([sys.executable, "-c", script, url], check=True, env={**os.environ, "PYTHONPATH": REPO})
    store = StatusStore(url)
    report = build_report(store)
    assert report.run["status"] == "interrupted" and report.eta_seconds is None
    assert all(d.eta_seconds is None for d in report.datasets) and "eta -" in render(report)
    assert store.query("SELECT status FROM runs") == [("running",)]  # a report alone writes nothing
    proc = subprocess.run([sys.executable, "-m", "workflow_lib", "status", "--db", url], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0 and "run r interrupted" in proc.stdout, proc.stdout + proc.stderr
    assert store.query("SELECT status FROM runs") == [("interrupted",)]
    assert dict(store.query("SELECT tile, status FROM tiles")) == {
        "r0000_c0000": "done", "r0000_c0001": "pending", "r0000_c0002": "pending"}
    # The live process of a run is not taken for gone.
    store.record(RunStarted(run_id="live", process_started_at=psutil.Process().create_time()))
    assert build_report(store).run["status"] == "running"


def test_status_into_a_closed_pipe_and_with_a_broken_config_say_one_line_or_nothing(tmp_path):
    """`status | head` ends quietly; a config that is not YAML is named with its line, no traceback."""
    url = f"sqlite:///{tmp_path}/status.sqlite"
    StatusStore(url).record(RunStarted(run_id="r"))
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-m", "workflow_lib", "status", "--db", url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and err == "", err
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("datasets: [a\n  b: c\n")
    proc = subprocess.run([sys.executable, "-m", "workflow_lib", "status"], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: config/config.yaml, line 1, column 11: not valid YAML"), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_status_without_a_database_creates_none_and_an_unreachable_one_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}

    def status(*args):
        return subprocess.run([sys.executable, "-m", "workflow_lib", "status", *args], cwd=tmp_path,
                              capture_output=True, text=True, env=env, timeout=60)

    proc = status("--db", "sqlite:///nope/x.sqlite")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "Error: no run recorded yet: there is no status database at nope/x.sqlite\n"
    proc = status()
    assert proc.returncode == 1 and "no run recorded yet" in proc.stderr
    assert os.listdir(tmp_path) == []  # neither nope/ nor results/
    proc = status("--db", "postgresql://someone:pw-never-shown@127.0.0.1:1/db")
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert proc.stderr.startswith("Error: cannot read the status database postgresql://someone:***@127.0.0.1:1/db: ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "pw-never-shown" not in proc.stderr, proc.stderr


def test_a_locked_sqlite_database_holds_writers_one_short_wait_then_they_spool(tmp_path):
    """Another process holding the database (BEGIN EXCLUSIVE) used to make every write wait 60 s:
    a 16-tile batch took minutes. Now the first write waits a few seconds, then every event of the
    next seconds goes to the spool at once, and a replay after the lock brings them all in."""
    import sqlite3

    from workflow_lib.status.store import RETRY_AFTER_S, WRITE_WAIT_S

    url = f"sqlite:///{tmp_path}/status.sqlite"
    store = StatusStore(url, spool_dir=str(tmp_path / "spool"))
    store.record(RunStarted(run_id="r"))
    holder = sqlite3.connect(tmp_path / "status.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    events = [TileStarted(run_id="r", dataset="dem", tile=f"r0000_c{i:04d}") for i in range(20)]
    assert not any([store.record(e) for e in events])
    waited = time.monotonic() - started
    assert waited < WRITE_WAIT_S + 3 < RETRY_AFTER_S, waited  # one wait, not one per event
    holder.execute("ROLLBACK")
    holder.close()
    store.replay()
    assert store.query("SELECT COUNT(*) FROM tiles WHERE status = 'running'") == [(20,)]


def test_a_spool_that_cannot_be_written_loses_events_but_never_raises(tmp_path, monkeypatch, caplog):
    """A full disk while the database is unreachable: the event is lost and said once, by name and
    cause; the caller (a batch's worker thread) goes on."""
    store = StatusStore("postgresql://nobody@127.0.0.1:1/none", spool_dir=str(tmp_path / "spool"))
    monkeypatch.setattr(store, "_spool_path", lambda: "/dev/full")  # every write: ENOSPC
    with caplog.at_level(logging.ERROR, logger="workflow_lib.status.store"):
        results = [store.record(TileStarted(run_id="r", dataset="dem", tile=f"r0000_c{i:04d}")) for i in range(3)]
    assert results == [False, False, False]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot write the spool /dev/full: No space left on device" in errors[0], errors


def test_a_database_deleted_during_a_run_is_noticed_and_the_run_recorded_again(tmp_path, caplog):
    """Deleting results/status.sqlite* under a running writer used to lose every later event into
    the deleted file, silently. The writer notices, says so, starts a new database, and the run's
    process records the run and its tiles in it again."""
    url = f"sqlite:///{tmp_path}/status.sqlite"
    store = StatusStore(url, spool_dir=str(tmp_path / "spool"))
    started = RunStarted(run_id="r")

    def record_run():
        store.record(started)
        store.record(TilesPlanned(run_id="r", dataset="dem", tiles=[["r0000_c0000", "done", "b", 1],
                                                                   ["r0000_c0001", "pending", "b", 1]]))

    store.on_new_database = record_run
    record_run()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(tmp_path / f"status.sqlite{suffix}"):
            os.unlink(tmp_path / f"status.sqlite{suffix}")
    with caplog.at_level(logging.WARNING, logger="workflow_lib.status.store"):
        store.record(TileStarted(run_id="r", dataset="dem", tile="r0000_c0001"))
    assert any("was deleted or replaced during the run" in r.getMessage() for r in caplog.records)
    reader = StatusStore(url)
    assert reader.query("SELECT id, status FROM runs") == [("r", "running")]
    assert dict(reader.query("SELECT tile, status FROM tiles")) == {"r0000_c0000": "done", "r0000_c0001": "running"}
