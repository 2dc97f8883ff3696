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


@dataclass
class Report:
    database: str
    run: dict | None
    datasets: list[DatasetProgress]
    running: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    controller: dict | None = None  # the run file's state (controller.runfile), when run from here

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
    for dataset, status, n in store.query("SELECT dataset, status, COUNT(*) FROM tiles GROUP BY dataset, status"):
        counts.setdefault(dataset, {})[status] = n
    # In the order the run first recorded them: the config's order.
    order = [row[0] for row in store.query("SELECT dataset FROM events WHERE kind = 'dataset' "
                                           "GROUP BY dataset ORDER BY MIN(at)")]
    names = order + sorted(set(counts) - set(order))
    datasets = []
    for name in names:
        c = counts.get(name, {})
        done, running, failed = c.get("done", 0), c.get("running", 0), c.get("failed", 0)
        total = sum(c.values())
        rate = _throughput(store, name, run, now)
        remaining = total - done
        eta = remaining / rate * 60 if rate and remaining else (0.0 if not remaining else None)
        datasets.append(DatasetProgress(name, total, done, running, failed, total - done - running - failed,
                                        rate, eta))
    running = [
        {"dataset": d, "tile": t, "attempt": a, "host": h, "external_job_id": j,
         "age_seconds": now - s if s else None,
         "since_heartbeat_seconds": now - hb if hb else None,
         "stalled": not frozen and (now - (hb or s or now)) > STALL_SECONDS}
        for d, t, a, h, j, s, hb in store.query(
            "SELECT dataset, tile, attempt, host, external_job_id, started_at, heartbeat_at FROM tiles "
            "WHERE status = 'running' ORDER BY started_at")
    ]
    failed = [
        {"dataset": d, "tile": t, "attempt": a, "error": err}
        for d, t, a, err in store.query("SELECT dataset, tile, attempt, error FROM tiles WHERE status = 'failed' "
                                        "ORDER BY ended_at DESC")
    ]
    return Report(redact(store.url), run, datasets, running, failed, controller)


def _throughput(store: StatusStore, dataset: str, run: dict | None, now: float) -> float | None:
    """Tiles per minute finished in this run so far."""
    if not run:
        return None
    rows = store.query("SELECT COUNT(*), MIN(started_at) FROM tiles WHERE dataset = ? AND run_id = ? "
                       "AND status = 'done' AND ended_at IS NOT NULL AND started_at IS NOT NULL",
                       (dataset, run["id"]))
    n, first = rows[0]
    end = run["ended_at"] or now
    if not n or not first or end <= first:
        return None
    return n / ((end - first) / 60.0)


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
    if report.running:
        lines += ["", "running:"]
        for j in report.running:
            beat = (f"last heartbeat {_duration(j['since_heartbeat_seconds'])} ago"
                    if j["since_heartbeat_seconds"] is not None else "no heartbeat yet")
            flag = "  STALLED" if j["stalled"] else ""
            job = f" job {j['external_job_id']}" if j["external_job_id"] else ""
            lines.append(f"  {j['dataset']}/{j['tile']} attempt {j['attempt']} on {j['host']}{job}, running "
                         f"{_duration(j['age_seconds'])}, {beat}{flag}")
    if report.failed:
        lines += ["", "failed:"]
        for j in report.failed:
            lines.append(f"  {j['dataset']}/{j['tile']} (attempt {j['attempt']}): {j['error']}")
    if report.complete:
        lines += ["", "all datasets complete"]
    return "\n".join(lines)


def to_json(report: Report) -> str:
    data = asdict(report)
    data["complete"] = report.complete
    return json.dumps(data, indent=1)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
