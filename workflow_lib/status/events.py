"""What the status database is told: one class per kind of event, each with the fields it carries.

An event is an envelope (its id, when, where, and the run, dataset and tile it is about) and the
fields of its kind. It is stored as a row of ``events`` (its kind and its fields as a JSON payload)
and applied to ``runs``, ``datasets`` and ``tiles`` by the store; a spool file holds the same
record, one per line, until the database is reached.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

ENVELOPE = ("run_id", "dataset", "tile", "id", "at", "host", "pid")


@dataclass(kw_only=True)
class Event:
    kind: ClassVar[str] = ""
    run_id: str | None = None
    dataset: str | None = None
    tile: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    at: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def payload(self) -> dict[str, Any]:
        """The fields of its kind, as the events table keeps them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ENVELOPE}

    def to_record(self) -> dict[str, Any]:
        """The event as a row of ``events`` and a line of a spool file."""
        return {"kind": self.kind, **{name: getattr(self, name) for name in ENVELOPE}, "payload": self.payload()}

    @staticmethod
    def from_record(record: dict[str, Any]) -> Event:
        """The event a record holds (a spool line, possibly written by an older version)."""
        kind, payload = record["kind"], dict(record.get("payload") or {})
        if kind == DatasetRecorded.kind and payload.get("status") == "failed":
            kind = DatasetFailed.kind  # spooled by a version that recorded failures as dataset facts
        cls = KINDS[kind]
        envelope = {name: record[name] for name in ENVELOPE if name in record}
        return cls._from_payload(envelope, payload)

    @classmethod
    def _from_payload(cls, envelope: dict, payload: dict) -> Event:
        known = {f.name for f in fields(cls)} - set(ENVELOPE)
        return cls(**envelope, **{k: v for k, v in payload.items() if k in known})


@dataclass(kw_only=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    # When its process started (psutil's create_time): a live process with its pid but another
    # start time is another process, the pid used again.
    process_started_at: float | None = None
    config_digest: str | None = None
    snakemake_version: str | None = None
    user: str | None = None


@dataclass(kw_only=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    # finished, failed, paused (by the controller), stopped, interrupted (its process found gone)
    status: str = "finished"


@dataclass(kw_only=True)
class DatasetRecorded(Event):
    """What the plan (status planned) or the dataset's register job (registered) knows of it."""

    kind: ClassVar[str] = "dataset"
    status: str = "planned"
    path: str | None = None
    file_size: int | None = None
    crs: str | None = None
    width: int | None = None
    height: int | None = None
    dtype: str | None = None
    nodata: float | str | None = None
    block_size: str | None = None
    tile_count: int | None = None


@dataclass(kw_only=True)
class DatasetFailed(Event):
    """The dataset's register job failed: its facts stay, its error is kept."""

    kind: ClassVar[str] = "dataset_failed"
    error: str | None = None


@dataclass(kw_only=True)
class DatasetStatistics(Event):
    """What the mosaic of a dataset holds (workflow_lib.statistics), recorded by its mosaic job."""

    kind: ClassVar[str] = "dataset_statistics"
    total_pixels: int | None = None
    valid_pixels: int | None = None
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    histogram: dict | None = None


@dataclass(kw_only=True)
class TilesPlanned(Event):
    kind: ClassVar[str] = "tiles_planned"
    # Every tile of the dataset in the run's plan, as [tile, status, batch, work]: work is the
    # plan's estimate of the tile's source pixels (the ETA's weight); a tile whose file exists is
    # planned as done. Tiles of the dataset outside the list (an earlier plan's) are forgotten.
    tiles: list = field(default_factory=list)


@dataclass(kw_only=True)
class TileStarted(Event):
    kind: ClassVar[str] = "tile_started"
    batch: str | None = None
    external_job_id: str | None = None  # the SLURM job
    mem_mb: int | None = None  # granted to the job


@dataclass(kw_only=True)
class TileMeasured(Event):
    kind: ClassVar[str] = "tile_measured"
    seconds: float | None = None
    peak_rss_mb: float | None = None
    engine: str | None = None  # its label
    pixels_written: int | None = None
    pixels_read: int | None = None
    external_job_id: str | None = None
    batch: str | None = None


@dataclass(kw_only=True)
class TileFinished(Event):
    kind: ClassVar[str] = "tile_finished"
    batch: str | None = None


@dataclass(kw_only=True)
class TileFailed(Event):
    kind: ClassVar[str] = "tile_failed"
    error: str | None = None
    batch: str | None = None


@dataclass(kw_only=True)
class BatchEnded(Event):
    """A batch job ended without finishing the tiles it was making (killed, out of memory,
    cancelled): those tiles failed, or are pending again when the job was cancelled."""

    kind: ClassVar[str] = "batch_ended"
    batch: str | None = None
    cancelled: str | None = None  # why it was a cancellation, not a failure
    error: str | None = None


@dataclass(kw_only=True)
class Note(Event):
    """Goes into the log of events only (a failed job's message, tests' load)."""

    kind: ClassVar[str] = "note"
    details: dict = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return dict(self.details)

    @classmethod
    def _from_payload(cls, envelope: dict, payload: dict) -> Event:
        return cls(**envelope, details=payload)


KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in (
    RunStarted, RunFinished, DatasetRecorded, DatasetFailed, DatasetStatistics, TilesPlanned, TileStarted,
    TileMeasured, TileFinished, TileFailed, BatchEnded, Note)}
