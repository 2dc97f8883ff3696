"""What `onegrid status` shows: progress per dataset, running, stalled and failed jobs."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache

from workflow_lib.domain import products, tile_dir
from workflow_lib.planning.plan import Plan
from workflow_lib.status.queries import RunRecord
from workflow_lib.status.run import INTERRUPTED, interrupted_run, read_run_context
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
    error: str | None = None  # its register job failed: why

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
    # What a complete run would have on disk and the folder lacks (tiles counted per dataset), once
    # every tile is done; None when not looked at (a database read away from the run's folder).
    missing: list[str] | None = None

    @property
    def tiles_done(self) -> bool:
        return bool(self.datasets) and all(d.done == d.total and d.error is None for d in self.datasets)

    @property
    def run_going_on(self) -> bool:
        return bool(self.run) and self.run["status"] == "running"

    @property
    def complete(self) -> bool:
        """Every tile done, the run over (the mosaics, the stack and the report come after the
        tiles), and nothing it made missing from disk."""
        return self.tiles_done and not self.run_going_on and not self.missing


def missing_outputs(workdir: str) -> list[str] | None:
    """What a complete run of the workflow in ``workdir`` would have on disk and does not: its
    plan's tiles (counted per dataset), mosaics, statistics, stack and report. None when the folder
    holds no run of this workflow. One directory listing per dataset."""
    context = read_run_context(workdir)
    try:
        path = os.path.join(workdir, context["plan"])
        plan = _plan_at(path, os.stat(path).st_mtime_ns)
    except (TypeError, KeyError, OSError, ValueError):
        return None
    missing = []
    for name, d in plan.datasets.items():
        folder = os.path.join(workdir, tile_dir(name))
        on_disk = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        absent = sum(1 for t in d.tiles if t.file_name not in on_disk)
        if absent:
            missing.append(f"{absent} of {d.tile_count} tiles of {name} ({tile_dir(name)})")
    expected = products(list(plan.datasets), plan.formats)
    return missing + [p for p in expected if not os.path.exists(os.path.join(workdir, p))]


@lru_cache(maxsize=2)
def _plan_at(path: str, mtime_ns: int) -> Plan:
    """The plan file, read once per version: the dashboard asks on every refresh, and a plan of a
    million tiles takes seconds to read."""
    with open(path) as f:
        return Plan.from_dict(json.load(f))


def build_report(store: StatusStore, now: float | None = None, controller: dict | None = None,
                 workdir: str | None = None) -> Report:
    """``controller``: {"state", "since", "describe"} of the controller's live run in this folder;
    a frozen run's jobs are silent because they are stopped, and are never flagged as stalled.
    ``workdir``: the run's folder, where a finished run's outputs are looked for."""
    now = now or time.time()
    frozen = bool(controller) and controller.get("state") == "frozen"
    run = store.latest_run()
    if run is not None and run.status == "running" and interrupted_run(store):
        run = replace(run, status=INTERRUPTED)  # shown so, stored so by the next `status` or run
    counts: dict[str, dict[str, int]] = {}
    work: dict[str, dict[str, float]] = {}
    for t in store.tile_tallies():
        counts.setdefault(t.dataset, {})[t.status] = t.count
        work.setdefault(t.dataset, {})[t.status] = t.work
    totals = store.work_totals()
    known = {d.name: d for d in store.datasets()}
    names = list(known) + sorted(set(counts) - set(known))
    datasets = []
    for name in names:
        c, w = counts.get(name, {}), work.get(name, {})
        done, running, failed = c.get("done", 0), c.get("running", 0), c.get("failed", 0)
        total = sum(c.values())
        work_total = totals.get(name, 0.0)
        work_done = w.get("done", 0.0) + w.get("running", 0.0)
        rate, work_rate = _throughput(store, name, run, now)
        remaining = work_total - work_done
        if done == total:
            eta = 0.0
        else:
            eta = remaining / work_rate if work_rate and run.status == "running" else None
        record = known.get(name)
        datasets.append(DatasetProgress(name, total, done, running, failed, total - done - running - failed,
                                        rate, eta, work_total, work_done,
                                        error=record.error if record and record.status == "failed" else None))
    running = [
        {"dataset": t.dataset, "tile": t.tile, "attempt": t.attempt, "host": t.host,
         "external_job_id": t.external_job_id,
         "age_seconds": now - t.started_at if t.started_at else None,
         "since_heartbeat_seconds": now - t.heartbeat_at if t.heartbeat_at else None,
         "stalled": not frozen and (now - (t.heartbeat_at or t.started_at or now)) > STALL_SECONDS,
         "progress": t.progress, "pixels_read": t.pixels_read, "rss_mb": t.rss_mb, "mem_mb": t.mem_mb,
         "batch": t.batch}
        for t in store.running_tiles()
    ]
    failed = [asdict(t) for t in store.failed_tiles()]
    report = Report(redact(store.url), asdict(run) if run else None, datasets, running, failed, controller,
                    _jobs(store, now))
    all_work = sum(d.work_total for d in datasets)
    report.work_share = sum(d.work_done for d in datasets) / all_work if all_work else 0.0
    _, run_rate = _throughput(store, None, run, now)
    remaining = all_work - sum(d.work_done for d in datasets)
    if workdir is not None and report.tiles_done and not report.run_going_on:
        report.missing = missing_outputs(workdir)
    going_on = run is not None and run.status == "running"
    report.eta_seconds = (0.0 if report.complete else remaining / run_rate if run_rate and going_on else None)
    return report


def _jobs(store: StatusStore, now: float) -> list[dict]:
    """The running batch jobs (one per host and process): their batch's tiles done, the running
    tiles' progress, the job's memory against what it was granted."""
    jobs: dict[tuple, dict] = {}
    for t in store.running_tiles():
        j = jobs.setdefault((t.dataset, t.batch, t.host, t.pid), {
            "dataset": t.dataset, "batch": t.batch, "host": t.host, "pid": t.pid,
            "external_job_id": t.external_job_id, "running": 0, "running_progress": 0.0, "rss_mb": None,
            "mem_mb": t.mem_mb, "started_at": t.started_at})
        j["running"] += 1
        j["running_progress"] += t.progress
        if t.rss_mb is not None:
            j["rss_mb"] = max(j["rss_mb"] or 0.0, float(t.rss_mb))
    if not jobs:
        return []
    sizes = {(b.dataset, b.batch): (b.tiles, b.done) for b in store.running_batches()}
    out = []
    for j in jobs.values():
        n, done = sizes.get((j["dataset"], j["batch"]), (j["running"], 0))
        j["tiles"], j["done"] = n, done
        j["progress"] = (j["done"] + j["running_progress"]) / max(j["tiles"], 1)
        j["age_seconds"] = now - j["started_at"] if j["started_at"] else None
        out.append(j)
    return out


def _throughput(store: StatusStore, dataset: str | None, run: RunRecord | None,
                now: float) -> tuple[float | None, float | None]:
    """Tiles per minute, and estimated work per second, done in this run so far (by one dataset, or
    by all when ``dataset`` is None): finished tiles and the finished share of running ones, since
    the first tile of the run started."""
    if not run:
        return None, None
    done = store.throughput(run, dataset)
    end = run.ended_at or now
    if not done.first or end <= done.first or not (done.tiles or done.work):
        return None, None
    minutes = (end - done.first) / 60.0
    return (done.tiles / minutes if done.tiles else None), (done.work / (end - done.first) if done.work else None)


def render(report: Report) -> str:
    lines = [f"status database: {report.database}"]
    if report.run:
        r = report.run
        age = (r["ended_at"] or time.time()) - r["started_at"]
        lines.append(f"run {r['id'][:12]} {r['status']} on {r['host']} by {r['user']}, {_duration(age)}")
    if report.controller:
        c = report.controller
        lines.append(f"controller: {c['state']} for {_duration(time.time() - c['since'])}"
                     + (" (pause --freeze; `onegrid resume` lets it go on)"
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
    if report.datasets and not report.tiles_done:
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
    broken = [d for d in report.datasets if d.error]
    if broken:
        lines += ["", "datasets that could not be registered:"]
        lines += [f"  {d.name}: {d.error}" for d in broken]
    if report.failed:
        lines += ["", "failed:"]
        for j in report.failed:
            lines.append(f"  {j['dataset']}/{j['tile']} (attempt {j['attempt']}): {j['error']}")
    if report.complete:
        lines += ["", "all datasets complete"]
    elif report.tiles_done and report.run_going_on:
        lines += ["", "all tiles done; the run goes on with the mosaics, the stack and the report"]
    elif report.tiles_done and report.missing:
        lines += ["", "the run ended, but these outputs are missing (run the workflow again to remake them):"]
        lines += [f"  {m}" for m in report.missing]
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
