"""What `python -m workflow_lib status` shows: progress per dataset, running, stalled and failed jobs."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from workflow_lib.status.store import StatusStore, redact

# A running tile whose last sign of life is older than this is flagged as stalled.
STALL_SECONDS = 120.0


@dataclass
class DatasetProgress:
    name: str
    total: int
    done: int
    running: int
    failed: int
    pending: int
    tiles_per_minute: float | None
    eta_seconds: float | None
    work_total: float = 0.0  # estimated source pixels of all tiles (the plan's), the ETA's weight
    work_done: float = 0.0  # of finished tiles, plus the finished share of running ones

    @property
    def work_share(self) -> float:
        return self.work_done / self.work_total if self.work_total else (1.0 if self.done == self.total else 0.0)


@dataclass
class Report:
    database: str
    run: dict | None
    datasets: list[DatasetProgress]
    running: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    controller: dict | None = None  # the run file's state (controller.runfile), when run from here
    jobs: list[dict] = field(default_factory=list)  # running batch jobs: progress, memory against mem_mb
    eta_seconds: float | None = None  # of the whole run, weighted by each tile's estimated work
    work_share: float = 0.0  # of the whole run

    @property
    def complete(self) -> bool:
        return bool(self.datasets) and all(d.done == d.total for d in self.datasets)


def build_report(store: StatusStore, now: float | None = None, controller: dict | None = None) -> Report:
    """``controller``: {"state", "since", "describe"} of the controller's live run in this folder;
    a frozen run's jobs are silent because they are stopped, and are never flagged as stalled."""
    now = now or time.time()
    frozen = bool(controller) and controller.get("state") == "frozen"
    runs = store.query("SELECT id, started_at, ended_at, status, host, run_user FROM runs "
                       "ORDER BY started_at DESC LIMIT 1")
    run = dict(zip(("id", "started_at", "ended_at", "status", "host", "user"), runs[0])) if runs else None
    counts: dict[str, dict[str, int]] = {}
    work: dict[str, dict[str, float]] = {}
    # A tile without an estimate (a database from before they were recorded) weighs 1.
    for dataset, status, n, w in store.query(
            "SELECT dataset, status, COUNT(*), SUM(COALESCE(work, 1) * (CASE WHEN status = 'running' "
            "THEN COALESCE(progress, 0) ELSE 1 END)) FROM tiles GROUP BY dataset, status"):
        counts.setdefault(dataset, {})[status] = n
        work.setdefault(dataset, {})[status] = float(w or 0)
    totals = dict(store.query("SELECT dataset, SUM(COALESCE(work, 1)) FROM tiles GROUP BY dataset"))
    # In the order the run first recorded them: the config's order.
    order = [row[0] for row in store.query("SELECT dataset FROM events WHERE kind = 'dataset' "
                                           "GROUP BY dataset ORDER BY MIN(at)")]
    names = order + sorted(set(counts) - set(order))
    datasets = []
    for name in names:
        c, w = counts.get(name, {}), work.get(name, {})
        done, running, failed = c.get("done", 0), c.get("running", 0), c.get("failed", 0)
        total = sum(c.values())
        work_total = float(totals.get(name) or 0)
        work_done = w.get("done", 0.0) + w.get("running", 0.0)
        rate, work_rate = _throughput(store, name, run, now)
        remaining = work_total - work_done
        if done == total:
            eta = 0.0
        else:
            eta = remaining / work_rate if work_rate else None
        datasets.append(DatasetProgress(name, total, done, running, failed, total - done - running - failed,
                                        rate, eta, work_total, work_done))
    running = [
        {"dataset": d, "tile": t, "attempt": a, "host": h, "external_job_id": j,
         "age_seconds": now - s if s else None,
         "since_heartbeat_seconds": now - hb if hb else None,
         "stalled": not frozen and (now - (hb or s or now)) > STALL_SECONDS,
         "progress": float(p or 0), "pixels_read": pr, "rss_mb": rss, "mem_mb": mem, "batch": b}
        for d, t, a, h, j, s, hb, p, pr, rss, mem, b in store.query(
            "SELECT dataset, tile, attempt, host, external_job_id, started_at, heartbeat_at, progress, pixels_read, "
            "rss_mb, mem_mb, batch FROM tiles WHERE status = 'running' ORDER BY started_at")
    ]
    failed = [
        {"dataset": d, "tile": t, "attempt": a, "error": err}
        for d, t, a, err in store.query("SELECT dataset, tile, attempt, error FROM tiles WHERE status = 'failed' "
                                        "ORDER BY ended_at DESC")
    ]
    report = Report(redact(store.url), run, datasets, running, failed, controller, _jobs(store, now))
    all_work = sum(d.work_total for d in datasets)
    report.work_share = sum(d.work_done for d in datasets) / all_work if all_work else 0.0
    _, run_rate = _throughput(store, None, run, now)
    remaining = all_work - sum(d.work_done for d in datasets)
    report.eta_seconds = (0.0 if report.complete else remaining / run_rate if run_rate else None)
    return report


def _jobs(store: StatusStore, now: float) -> list[dict]:
    """The running batch jobs (one per host and process): their batch's tiles done, the running
    tiles' progress, the job's memory against what it was granted."""
    jobs: dict[tuple, dict] = {}
    for d, b, host, pid, job_id, started, progress, rss, mem in store.query(
            "SELECT dataset, batch, host, pid, external_job_id, started_at, progress, rss_mb, mem_mb FROM tiles "
            "WHERE status = 'running' ORDER BY started_at"):
        j = jobs.setdefault((d, b, host, pid), {
            "dataset": d, "batch": b, "host": host, "pid": pid, "external_job_id": job_id, "running": 0,
            "running_progress": 0.0, "rss_mb": None, "mem_mb": mem, "started_at": started})
        j["running"] += 1
        j["running_progress"] += float(progress or 0)
        if rss is not None:
            j["rss_mb"] = max(j["rss_mb"] or 0.0, float(rss))
    if not jobs:
        return []
    sizes = {(d, b): (n, done) for d, b, n, done in store.query(
        "SELECT dataset, batch, COUNT(*), SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END) FROM tiles "
        "WHERE batch IN (SELECT batch FROM tiles WHERE status = 'running') GROUP BY dataset, batch")}
    out = []
    for j in jobs.values():
        n, done = sizes.get((j["dataset"], j["batch"]), (j["running"], 0))
        j["tiles"], j["done"] = int(n), int(done or 0)
        j["progress"] = (j["done"] + j["running_progress"]) / max(j["tiles"], 1)
        j["age_seconds"] = now - j["started_at"] if j["started_at"] else None
        out.append(j)
    return out


def _throughput(store: StatusStore, dataset: str | None, run: dict | None, now: float) -> tuple[float | None, float | None]:
    """Tiles per minute, and estimated work per second, done in this run so far (by one dataset, or
    by all when ``dataset`` is None): finished tiles and the finished share of running ones, since
    the first tile of the run started."""
    if not run:
        return None, None
    # Tiles started in this run: a resumed run's tiles from before carry its id too (planned as done).
    where, params = "run_id = ? AND started_at >= ?", (run["id"], run["started_at"] or 0)
    if dataset is not None:
        where, params = "dataset = ? AND " + where, (dataset, *params)
    rows = store.query(
        "SELECT SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END), "
        "SUM(COALESCE(work, 1) * (CASE WHEN status = 'done' THEN 1 ELSE COALESCE(progress, 0) END)), "
        f"MIN(started_at) FROM tiles WHERE {where} AND status IN ('done', 'running') AND started_at IS NOT NULL",
        params)
    n, w, first = rows[0]
    n, w = int(n or 0), float(w or 0)  # PostgreSQL sums are exact decimals
    end = run["ended_at"] or now
    if not first or end <= first or not (n or w):
        return None, None
    minutes = (end - first) / 60.0
    return (n / minutes if n else None), (float(w) / (end - first) if w else None)


def render(report: Report) -> str:
    lines = [f"status database: {report.database}"]
    if report.run:
        r = report.run
        age = (r["ended_at"] or time.time()) - r["started_at"]
        lines.append(f"run {r['id'][:12]} {r['status']} on {r['host']} by {r['user']}, {_duration(age)}")
    if report.controller:
        c = report.controller
        lines.append(f"controller: {c['state']} for {_duration(time.time() - c['since'])}"
                     + (" (pause --freeze; `python -m workflow_lib resume` lets it go on)"
                        if c["state"] == "frozen" else ""))
    lines.append("")
    width = max([len(d.name) for d in report.datasets] + [7])
    lines.append(f"{'dataset':<{width}}  {'progress':<22} {'done':>6} {'run':>4} {'fail':>4} {'pend':>5} "
                 f"{'total':>6}  {'tiles/min':>9}  eta")
    for d in report.datasets:
        share = d.done / d.total if d.total else 0.0
        bar = "#" * int(round(share * 20))
        rate = f"{d.tiles_per_minute:9.1f}" if d.tiles_per_minute else f"{'-':>9}"
        eta = _duration(d.eta_seconds) if d.eta_seconds is not None else "-"
        lines.append(f"{d.name:<{width}}  [{bar:<20}] {d.done:>6} {d.running:>4} {d.failed:>4} {d.pending:>5} "
                     f"{d.total:>6}  {rate}  {eta}")
    if report.datasets and not report.complete:
        eta = _duration(report.eta_seconds) if report.eta_seconds is not None else "-"
        lines.append(f"{'all':<{width}}  {100 * report.work_share:5.1f} % of the estimated work done, eta {eta}")
    if report.jobs:
        lines += ["", "running jobs:"]
        for j in report.jobs:
            bar = "#" * int(round(j["progress"] * 20))
            memory = (f"RSS {j['rss_mb']:.0f} of {j['mem_mb']} MB" if j["rss_mb"] is not None and j["mem_mb"]
                      else "RSS -")
            job = f" job {j['external_job_id']}" if j["external_job_id"] else ""
            lines.append(f"  {j['dataset']} {j['batch']} on {j['host']}{job} [{bar:<20}] "
                         f"{j['done'] + j['running_progress']:.1f} of {j['tiles']} tiles, {memory}, "
                         f"running {_duration(j['age_seconds'])}")
    if report.running:
        lines += ["", "running:"]
        for j in report.running:
            beat = (f"last heartbeat {_duration(j['since_heartbeat_seconds'])} ago"
                    if j["since_heartbeat_seconds"] is not None else "no heartbeat yet")
            flag = "  STALLED" if j["stalled"] else ""
            job = f" job {j['external_job_id']}" if j["external_job_id"] else ""
            done = f", {100 * j['progress']:.0f} %" if j.get("progress") else ""
            lines.append(f"  {j['dataset']}/{j['tile']} attempt {j['attempt']} on {j['host']}{job}, running "
                         f"{_duration(j['age_seconds'])}{done}, {beat}{flag}")
    if report.failed:
        lines += ["", "failed:"]
        for j in report.failed:
            lines.append(f"  {j['dataset']}/{j['tile']} (attempt {j['attempt']}): {j['error']}")
    if report.complete:
        lines += ["", "all datasets complete"]
    return "\n".join(lines)


def report_dict(report: Report) -> dict:
    data = asdict(report)
    data["complete"] = report.complete
    for d, progress in zip(data["datasets"], report.datasets):
        d["work_share"] = progress.work_share
    return data


def to_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=1)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
