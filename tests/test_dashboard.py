"""The live dashboard: what its server answers, that it only reads, that text from the database is
shown as text, and what headless Chromium shows during a real run, against the database."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest

from workflow_lib.status import StatusStore, TileBeat
from workflow_lib.status.events import (DatasetRecorded, RunStarted, TileFailed, TileFinished, TilesPlanned,
                                        TileStarted)
from workflow_lib.views.dashboard import make_server

from .browser import Dom, dump_dom, screenshot
from .helpers import REPO, finish, start, synthetic_config, write_config

EVIL = "<script>window.PWNED=1</script><img src=x onerror=window.PWNED=2>"


def artifacts(tmp_path) -> str:
    """Where screenshots go: TEST_ARTIFACTS if set (CI keeps them), else the test's folder."""
    folder = os.environ.get("TEST_ARTIFACTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    return folder


def fill(store: StatusStore, now: float) -> None:
    """A run half way: a dataset with a hostile name, 6 tiles of which 2 done, 1 running at 40 %,
    1 failed with a hostile error, 2 pending."""
    store.record(RunStarted(run_id="r", at=now - 100))
    for name in ("dem", EVIL):
        store.record(DatasetRecorded(run_id="r", dataset=name, at=now - 100, status="registered"))
        store.record(TilesPlanned(run_id="r", dataset=name, at=now - 100, tiles=[
            [f"r{r:04d}_c{c:04d}", "pending", "b0", 100.0] for r in range(2) for c in range(3)]))
    for tile in ("r0000_c0000", "r0000_c0001"):
        store.record(TileStarted(run_id="r", dataset=EVIL, tile=tile, at=now - 90, batch="b0", mem_mb=512))
        store.record(TileFinished(run_id="r", dataset=EVIL, tile=tile, at=now - 60))
    store.record(TileStarted(run_id="r", dataset=EVIL, tile="r0000_c0002", at=now - 50, batch="b0", mem_mb=512))
    store.heartbeat(EVIL, [TileBeat("r0000_c0002", 0.4, 1000)], rss_mb=210.0)
    store.record(TileStarted(run_id="r", dataset=EVIL, tile="r0001_c0000", at=now - 50))
    store.record(TileFailed(run_id="r", dataset=EVIL, tile="r0001_c0000", at=now - 40, error=EVIL))


@pytest.fixture
def served(tmp_path):
    url = f"sqlite:///{tmp_path}/status.sqlite"
    writer = StatusStore(url)
    fill(writer, time.time())
    writer.close()
    reader = StatusStore(url, read_only=True)
    server = make_server(reader, port=0, refresh_seconds=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", url
    server.shutdown()
    server.server_close()
    reader.close()


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_server_answers_state_and_tiles_from_the_database_and_listens_on_loopback(served, tmp_path):
    base, url = served
    assert base.startswith("http://127.0.0.1:")
    status, headers, body = get(base + "/")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"] and b"<script src=\"dashboard.js\"" in body
    state = json.loads(get(base + "/api/state")[2])
    grid = state["grids"][EVIL]
    assert (grid["rows"], grid["cols"], grid["states"]) == (2, 3, "ddrfpp")
    assert grid["running"] == {"r0000_c0002": 0.4}
    assert state["grids"]["dem"]["states"] == "pppppp"
    d = {x["name"]: x for x in state["report"]["datasets"]}[EVIL]
    assert (d["done"], d["running"], d["failed"], d["pending"], d["total"]) == (2, 1, 1, 2, 6)
    [job] = state["report"]["jobs"]
    assert (job["rss_mb"], job["mem_mb"], job["done"], job["tiles"]) == (210.0, 512, 2, 6)
    assert sum(state["throughput"]["tiles"]) == 2
    q = urllib.parse.urlencode({"dataset": EVIL, "tile": "r0001_c0000"})
    row = json.loads(get(f"{base}/api/tile?{q}")[2])
    assert (row["status"], row["error"]) == ("failed", EVIL)
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(f"{base}/api/tile?dataset=dem&tile=r0099_c0099")
    assert missing.value.code == 404


def test_a_request_for_another_host_name_is_refused(served):
    """DNS rebinding: another site's name pointed at 127.0.0.1 must not read the run's state."""
    base, _ = served
    port = base.rsplit(":", 1)[1]
    for name in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        request = urllib.request.Request(base + "/api/state", headers={"Host": name})
        assert get(request)[0] == 200
    for name in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}"):
        request = urllib.request.Request(base + "/api/state", headers={"Host": name})
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(request)
        assert refused.value.code == 421 and b"unknown host" in refused.value.read()


def test_dashboard_only_reads_the_database(served, tmp_path):
    base, url = served
    path = tmp_path / "status.sqlite"
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    for _ in range(3):
        get(base + "/api/state")
        get(base + "/")
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_browser_shows_the_tile_map_and_figures_and_hostile_text_as_text(served, tmp_path):
    base, _ = served
    text = dump_dom(base + "/", str(tmp_path / "chromium"))
    dom = Dom(text)
    assert int(dom.find("body")[0]["attrs"]["data-loaded"]) >= 1, "the page's script drew the state"
    rects = {e["attrs"]["data-tile"]: e["attrs"]["data-state"] for e in dom.find("rect")
             if "data-tile" in e["attrs"] and e["dataset"] == EVIL}
    assert rects == {"r0000_c0000": "done", "r0000_c0001": "done", "r0000_c0002": "running",
                     "r0001_c0000": "failed", "r0001_c0001": "pending", "r0001_c0002": "pending"}
    figures = {e["attrs"]["data-figure"]: e["text"] for e in dom.find("span") if e["dataset"] == EVIL
               and "data-figure" in e["attrs"]}
    assert figures["done"].startswith("2 ") and figures["failed"].startswith("1 ") and figures["total"].startswith("6 ")
    # The hostile name and error are there as text, and nothing they hold ran or became an element.
    assert any(e["text"] == EVIL for e in dom.find("h3"))
    assert EVIL in dom.by_id("failed")["text"]
    assert [e["attrs"].get("src") for e in dom.find("script")] == ["dashboard.js"]
    assert not dom.find("img")
    assert "&lt;script&gt;window.PWNED=1&lt;/script&gt;" in text
    memory = [e["text"] for e in dom.find("td") if e["attrs"].get("data-figure") == "memory"]
    assert memory == ["210 of 512 MB"]
    shot = screenshot(base + "/", str(tmp_path / "chromium"), os.path.join(artifacts(tmp_path), "dashboard-unit.png"))
    assert os.path.getsize(shot) > 10_000


@pytest.mark.integration
def test_browser_during_a_run_shows_what_the_database_holds(tmp_path, record):
    """A real run: dataset dem completes while dataset stuck has one tile running (its pixels sit
    behind a named pipe nobody writes) and 15 pending. The page, loaded in Chromium, shows exactly
    the database's states, counts and the running job's memory."""
    from .helpers import STALLING_VRT

    os.mkfifo(tmp_path / "pipe.tif")
    (tmp_path / "stalling.vrt").write_text(STALLING_VRT)
    config = synthetic_config(tmp_path)
    config["datasets"] = {"dem": config["datasets"]["dem"],
                          "stuck": {"path": str(tmp_path / "stalling.vrt"), "method": "average"}}
    config.update(tile_size=32, tiles_per_job=16, threads_per_job=1, database={"heartbeat_seconds": 1})
    write_config(tmp_path, config)
    proc = start(tmp_path, "--cores", "2", "--resources", "mem_mb=4000")
    dashboard = subprocess.Popen([sys.executable, "-m", "workflow_lib", "dashboard", "--port", "0", "--refresh", "1"],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, "PYTHONPATH": REPO})
    try:
        line = dashboard.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        base = match.group(0)
        store = StatusStore(f"sqlite:///{tmp_path}/results/status.sqlite", read_only=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                rows = dict(((d, s), n) for d, s, n in store.query(
                    "SELECT dataset, status, COUNT(*) FROM tiles GROUP BY dataset, status"))
                beating = store.query("SELECT COUNT(*) FROM tiles WHERE status = 'running' AND rss_mb IS NOT NULL")
            except Exception:  # noqa: BLE001 - the database is not there yet
                store.close()
                rows, beating = {}, [(0,)]
            if rows.get(("stuck", "running")) == 1 and not rows.get(("dem", "pending")) \
                    and not rows.get(("dem", "running")) and beating == [(1,)]:
                break
            assert proc.poll() is None, finish(proc)
            time.sleep(0.5)
        else:
            pytest.fail(f"the run never reached the expected state: {rows}")
        text = dump_dom(base, str(tmp_path / "chromium"))
        shot = screenshot(base, str(tmp_path / "chromium"), os.path.join(artifacts(tmp_path), "dashboard-run.png"))
        states = dict(((d, t), s) for d, t, s in store.query("SELECT dataset, tile, status FROM tiles"))
        running = store.query("SELECT rss_mb, mem_mb FROM tiles WHERE status = 'running'")
        store.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        dashboard.terminate()
        dashboard.wait(timeout=30)
    dom = Dom(text)
    shown = {(e["dataset"], e["attrs"]["data-tile"]): e["attrs"]["data-state"] for e in dom.find("rect")
             if "data-tile" in e["attrs"]}
    assert shown == states
    for name in ("dem", "stuck"):
        figures = {e["attrs"]["data-figure"]: e["text"].split()[0] for e in dom.find("span")
                   if e["dataset"] == name and "data-figure" in e["attrs"]}
        counts = {s: sum(1 for (d, _), x in states.items() if d == name and x == s)
                  for s in ("done", "running", "failed", "pending")}
        assert {k: int(figures[k]) for k in counts} == counts
        assert int(figures["total"]) == sum(counts.values())
    assert dom.by_id("run")["attrs"]["data-status"] == "running"
    [(rss, mem)] = running
    memory = [e["text"] for e in dom.find("td") if e["attrs"].get("data-figure") == "memory"]
    assert len(memory) == 1 and memory[0].endswith(f"of {mem} MB") and 30 < float(memory[0].split()[0]) < mem
    assert [e["text"] for e in dom.find("td") if e["attrs"].get("data-figure") == "tiles"] == ["0.0 of 16"]
    record(f"dashboard during a run: {len(states)} tiles shown as in the database "
           f"({sum(1 for s in states.values() if s == 'done')} done, 1 running at {rss:.0f} of {mem} MB); "
           f"screenshot {shot}")
    assert psutil.pid_exists(proc.pid) is False or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
