"""What the status database answers: runs, datasets, tiles, jobs and throughput as typed rows.

The status command, the dashboard, the report and the CLI read the database through these methods
only, so that the schema (status.schema) has one module that writes it and one that reads it.
``StatusStore`` inherits them; each runs one query through ``self.query``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class RunRecord:
    id: str
    started_at: float | None
    ended_at: float | None
    status: str
    host: str | None
    user: str | None


@dataclass(frozen=True)
class DatasetRecord:
    name: str
    status: str  # planned, registered, failed
    error: str | None  # why its register job failed
    path: str | None
    tile_count: int | None


@dataclass(frozen=True)
class TileTally:
    """Tiles of one dataset in one state, and their estimated work (running ones by their progress)."""

    dataset: str
    status: str
    count: int
    work: float


@dataclass(frozen=True)
class RunningTile:
    dataset: str
    tile: str
    batch: str | None
    attempt: int
    host: str | None
    pid: int | None
    external_job_id: str | None
    started_at: float | None
    heartbeat_at: float | None
    progress: float  # share of its chunks written
    pixels_read: int | None
    rss_mb: float | None  # the job's, at its last heartbeat
    mem_mb: int | None  # granted to the job


@dataclass(frozen=True)
class FailedTile:
    dataset: str
    tile: str
    attempt: int
    error: str | None


@dataclass(frozen=True)
class BatchTally:
    dataset: str
    batch: str
    tiles: int
    done: int


@dataclass(frozen=True)
class Throughput:
    """Tiles finished, and estimated work done (running tiles by their progress), since ``first``
    (the start of the first tile counted)."""

    tiles: int
    work: float
    first: float | None


@dataclass(frozen=True)
class TileState:
    dataset: str
    tile: str
    status: str
    progress: float | None


@dataclass(frozen=True)
class TileRecord:
    """A tile's figures, for the report's map and per-tile plots."""

    dataset: str
    tile: str
    batch: str | None
    status: str
    seconds: float | None
    peak_rss_mb: float | None
    mem_mb: int | None
    work: float | None
    pixels_read: int | None
    ended_at: float | None


@dataclass(frozen=True)
class DatasetStatisticsRecord:
    name: str
    total_pixels: int | None
    valid_pixels: int | None
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    histogram: dict | None


# Every column of a tile's row, as the dashboard shows one tile.
TILE_COLUMNS = ("dataset", "tile", "batch", "status", "attempt", "run_id", "started_at", "ended_at", "seconds",
                "peak_rss_mb", "rss_mb", "mem_mb", "progress", "pixels_read", "work", "host", "pid",
                "external_job_id", "engine", "pixels_written", "heartbeat_at", "error")
# A tile without an estimate of its work (a database from before they were recorded) weighs 1.
_WORK = "COALESCE(work, 1)"


def _number(value) -> float:
    return float(value or 0)  # PostgreSQL sums are exact decimals


class StatusQueries:
    """Read methods of the status store (mixed into StatusStore, which provides ``query``)."""

    def query(self, text: str, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def schema_version(self) -> int:
        raise NotImplementedError

    def latest_run(self) -> RunRecord | None:
        rows = self.query("SELECT id, started_at, ended_at, status, host, run_user FROM runs "
                          "ORDER BY started_at DESC LIMIT 1")
        return RunRecord(*rows[0]) if rows else None

    def run_process(self, run_id: str) -> tuple[str | None, int | None, float | None]:
        """(host, pid, the process's start time) of the Snakemake process that started a run, from
        its run_started event."""
        rows = self.query("SELECT host, pid, payload FROM events WHERE kind = 'run_started' AND run_id = ? LIMIT 1",
                          (run_id,))
        if not rows:
            return None, None, None
        host, pid, payload = rows[0]
        try:
            started = json.loads(payload or "{}").get("process_started_at")
        except (ValueError, AttributeError):
            started = None
        return host, pid, started

    def dataset_order(self) -> list[str]:
        """Dataset names in the order the runs first recorded them: the config's order."""
        return [name for (name,) in self.query("SELECT dataset FROM events WHERE kind = 'dataset' "
                                               "GROUP BY dataset ORDER BY MIN(at)")]

    def datasets(self) -> list[DatasetRecord]:
        """Every dataset the database knows, in the config's order (dataset_order)."""
        # A reader never migrates: a database from before errors were kept has none.
        error = "error" if self.schema_version() >= 4 else "NULL"
        rows = {r[0]: DatasetRecord(*r) for r in self.query(
            f"SELECT name, status, {error}, path, tile_count FROM datasets")}
        order = [n for n in self.dataset_order() if n in rows]
        return [rows[n] for n in order + sorted(set(rows) - set(order))]

    def tile_tallies(self) -> list[TileTally]:
        return [TileTally(d, s, int(n), _number(w)) for d, s, n, w in self.query(
            f"SELECT dataset, status, COUNT(*), SUM({_WORK} * (CASE WHEN status = 'running' "
            "THEN COALESCE(progress, 0) ELSE 1 END)) FROM tiles GROUP BY dataset, status")]

    def work_totals(self) -> dict[str, float]:
        """Each dataset's estimated work, over all its tiles."""
        return {d: _number(w) for d, w in self.query(f"SELECT dataset, SUM({_WORK}) FROM tiles GROUP BY dataset")}

    def running_tiles(self) -> list[RunningTile]:
        """The tiles being made now, the oldest first."""
        return [RunningTile(d, t, b, a, h, pid, j, s, hb, float(p or 0), pr, rss, mem)
                for d, t, b, a, h, pid, j, s, hb, p, pr, rss, mem in self.query(
                    "SELECT dataset, tile, batch, attempt, host, pid, external_job_id, started_at, heartbeat_at, "
                    "progress, pixels_read, rss_mb, mem_mb FROM tiles WHERE status = 'running' ORDER BY started_at")]

    def failed_tiles(self, limit: int | None = None) -> list[FailedTile]:
        """Failed tiles, the latest failure first."""
        text = "SELECT dataset, tile, attempt, error FROM tiles WHERE status = 'failed' ORDER BY ended_at DESC"
        if limit is not None:
            text += f" LIMIT {int(limit)}"
        return [FailedTile(*row) for row in self.query(text)]

    def running_batches(self) -> list[BatchTally]:
        """The batches that have a tile running: their tiles, and how many are done."""
        return [BatchTally(d, b, int(n), int(done or 0)) for d, b, n, done in self.query(
            "SELECT dataset, batch, COUNT(*), SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END) FROM tiles "
            "WHERE batch IN (SELECT batch FROM tiles WHERE status = 'running') GROUP BY dataset, batch")]

    def throughput(self, run: RunRecord, dataset: str | None = None) -> Throughput:
        """Done in ``run`` so far (by one dataset, or by all): tiles started in it (a resumed run's
        tiles from before carry its id too, planned as done) that finished, and the finished share
        of running ones."""
        where, params = "run_id = ? AND started_at >= ?", (run.id, run.started_at or 0)
        if dataset is not None:
            where, params = "dataset = ? AND " + where, (dataset, *params)
        n, w, first = self.query(
            "SELECT SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END), "
            f"SUM({_WORK} * (CASE WHEN status = 'done' THEN 1 ELSE COALESCE(progress, 0) END)), "
            f"MIN(started_at) FROM tiles WHERE {where} AND status IN ('done', 'running') AND started_at IS NOT NULL",
            params)[0]
        return Throughput(int(n or 0), _number(w), first)

    def finished_per_interval(self, run: RunRecord, start: float, step: float) -> list[tuple[int, int, float]]:
        """(interval, tiles, estimated work) finished in ``run`` in each ``step`` seconds from ``start``."""
        return [(int(i), int(n), _number(w)) for i, n, w in self.query(
            f"SELECT CAST((ended_at - ?) / ? AS INTEGER), COUNT(*), SUM({_WORK}) FROM tiles "
            "WHERE run_id = ? AND status = 'done' AND ended_at >= ? GROUP BY 1", (start, step, run.id, start))]

    def tile_states(self) -> list[TileState]:
        return [TileState(*row) for row in self.query("SELECT dataset, tile, status, progress FROM tiles")]

    def tile_row(self, dataset: str, tile: str) -> dict | None:
        """Everything the database holds of one tile (TILE_COLUMNS)."""
        rows = self.query(f"SELECT {', '.join(TILE_COLUMNS)} FROM tiles WHERE dataset = ? AND tile = ?",
                          (dataset, tile))
        return dict(zip(TILE_COLUMNS, rows[0])) if rows else None

    def tile_records(self) -> list[TileRecord]:
        return [TileRecord(*row) for row in self.query(
            "SELECT dataset, tile, batch, status, seconds, peak_rss_mb, mem_mb, work, pixels_read, ended_at "
            "FROM tiles")]

    def tiles_done(self) -> set[tuple[str, str]]:
        """(dataset, tile) of every finished tile."""
        return set(self.query("SELECT dataset, tile FROM tiles WHERE status = 'done'"))

    def dataset_statistics(self) -> list[DatasetStatisticsRecord]:
        """The statistics of each dataset whose mosaic job recorded them, in the config's order (none
        in a database from before they were recorded)."""
        if self.schema_version() < 3:
            return []
        rows = {r[0]: r for r in self.query(
            "SELECT name, total_pixels, valid_pixels, stat_min, stat_max, stat_mean, stat_std, histogram "
            "FROM datasets WHERE valid_pixels IS NOT NULL")}
        order = [n for n in self.dataset_order() if n in rows]
        return [DatasetStatisticsRecord(*rows[n][:7], json.loads(rows[n][7]) if rows[n][7] else None)
                for n in order + sorted(set(rows) - set(order))]
