"""The status database on SQLite and on a real PostgreSQL (started by the tests, see tests/pg.py)."""

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from workflow_lib.status import Event, StatusStore
from workflow_lib.views.status import STALL_SECONDS, build_report, render, to_json

from .helpers import REPO

WRITER = """
import sys, time
from workflow_lib.status import Event, StatusStore
url, spool, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = StatusStore(url, spool_dir=spool)
for i in range(n):
    store.record(Event("note", run_id="load", dataset=f"w{worker}", tile=f"r{i:04d}_c0000", payload={"i": i}))
    if i % 10 == 0:
        store.record(Event("tile_measured", dataset=f"w{worker}", tile="r0000_c0000", payload={"seconds": i}))
store.close()
"""


def test_schema_is_migrated_once_with_its_version(store_url, tmp_path):
    for _ in range(2):
        store = StatusStore(store_url, spool_dir=str(tmp_path / "spool"))
        store.record(Event("run_started", run_id="r1"))
        assert store.query("SELECT version FROM schema_migrations ORDER BY version") == [(1,), (2,)]
        store.close()
    assert StatusStore(store_url).query("SELECT COUNT(*) FROM runs") == [(1,)]


def test_quotes_and_sql_in_names_and_messages_are_stored_verbatim(store_url, tmp_path):
    name = "o'brien\"; DROP TABLE tiles; --"
    error = "it's \"broken\"'); DELETE FROM events WHERE ('1'='1"
    store = StatusStore(store_url, spool_dir=str(tmp_path / "spool"))
    store.record(Event("tiles_planned", run_id="r", dataset=name, payload={"tiles": [["r0000_c0000", "pending"]]}))
    store.record(Event("tile_started", run_id="r", dataset=name, tile="r0000_c0000"))
    store.record(Event("tile_failed", run_id="r", dataset=name, tile="r0000_c0000", payload={"error": error}))
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


def test_unreachable_database_spools_events_and_replays_them(pg_cluster, tmp_path, caplog, record):
    url = pg_cluster.new_database().replace("postgres@", "postgres:secret-password@")
    spool = str(tmp_path / "spool")
    store = StatusStore(url, spool_dir=spool)
    store.record(Event("run_started", run_id="r"))
    pg_cluster.stop()
    try:
        with caplog.at_level(logging.WARNING):
            reached = [store.record(Event("note", run_id="r", payload={"i": i})) for i in range(300)]
        assert not any(reached)
        assert len(os.listdir(spool)) == 1
    finally:
        pg_cluster.start()
    warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "spooled" in warnings[0]
    assert "secret-password" not in caplog.text
    assert store.record(Event("note", run_id="r", payload={"i": 300}))  # replays the spool first
    assert store.query("SELECT COUNT(*) FROM events WHERE kind = 'note'") == [(301,)]
    assert os.listdir(spool) == []
    record("status postgresql outage: 300 events spooled while the server was down, 301/301 present after restart")


def test_replaying_the_same_spool_twice_applies_each_event_once(tmp_path):
    url = f"sqlite:///{tmp_path}/s.sqlite"
    spool = tmp_path / "spool"
    spool.mkdir()
    events = [Event("tile_started", run_id="r", dataset="d", tile="r0000_c0000") for _ in range(3)]
    line = "".join(json.dumps(e.__dict__) + "\n" for e in events)
    (spool / "spool-a-1.jsonl").write_text(line + '{"kind": "trunc')  # a writer died mid-line
    (spool / "spool-b-2.jsonl").write_text(line)  # the same events again
    store = StatusStore(url, spool_dir=str(spool))
    store.replay()
    assert store.query("SELECT attempt, status FROM tiles") == [(3, "running")]
    assert store.query("SELECT COUNT(*) FROM events") == [(3,)]


def test_report_shows_progress_eta_and_flags_stalled_jobs(tmp_path):
    store = StatusStore(f"sqlite:///{tmp_path}/s.sqlite")
    t0 = 1_000_000.0
    store.record(Event("run_started", run_id="r", at=t0))
    store.record(Event("tiles_planned", run_id="r", dataset="dem", at=t0,
                       payload={"tiles": [[f"r0000_c{i:04d}", "pending"] for i in range(10)]}))
    for i in range(4):
        store.record(Event("tile_started", run_id="r", dataset="dem", tile=f"r0000_c{i:04d}", at=t0 + 60 * i))
        store.record(Event("tile_finished", run_id="r", dataset="dem", tile=f"r0000_c{i:04d}", at=t0 + 60 * i + 60))
    store.record(Event("tile_started", run_id="r", dataset="dem", tile="r0000_c0004", at=t0 + 240))
    store.record(Event("tile_started", run_id="r", dataset="dem", tile="r0000_c0005", at=t0 + 240))
    store.record(Event("tile_failed", run_id="r", dataset="dem", tile="r0000_c0005", at=t0 + 250,
                       payload={"error": "InputRasterError: dataset 'dem' (a.tif): read failed"}))
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
