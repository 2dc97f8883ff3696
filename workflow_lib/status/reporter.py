"""A batch job's voice in the status database: each tile as it starts, progresses, ends or fails,
and a heartbeat of the tiles being made."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from workflow_lib.domain import Engine, TileIndex
from workflow_lib.engines.batch import TileHooks
from workflow_lib.runtime import peak_rss_mb, rss_mb
from workflow_lib.status.events import TileFailed, TileFinished, TileMeasured, TileStarted
from workflow_lib.status.run import RUN_ID_ENV
from workflow_lib.status.store import StatusStore, TileBeat


class BatchReporter:
    """Records the tiles of one batch job in ``store`` (the job's own connection), and keeps the
    running tiles' progress for the heartbeat. Its ``hooks`` go to engines.batch.run_batch; they
    are called from the batch's worker threads."""

    def __init__(self, store: StatusStore, dataset: str, batch: str, engine: Engine, mem_mb: int):
        self.store = store
        self.batch = batch
        self.engine = engine
        self.mem_mb = mem_mb
        self.envelope = {"run_id": os.environ.get(RUN_ID_ENV) or None, "dataset": dataset}
        self.job = os.environ.get("SLURM_JOB_ID")  # the cluster's job, when there is one
        self._running: dict[TileIndex, TileBeat] = {}
        self._lock = threading.Lock()

    @property
    def hooks(self) -> TileHooks:
        return TileHooks(started=self.started, finished=self.finished, failed=self.failed, progress=self.progress)

    def started(self, tile: TileIndex) -> None:
        with self._lock:
            self._running[tile] = TileBeat(tile.id, 0.0, 0)
        self.store.record(TileStarted(tile=tile.id, batch=self.batch, external_job_id=self.job, mem_mb=self.mem_mb,
                                      **self.envelope))

    def progress(self, tile: TileIndex, done: int, total: int, pixels_read: int) -> None:
        with self._lock:
            if tile in self._running:
                self._running[tile] = TileBeat(tile.id, done / max(total, 1), pixels_read)

    def finished(self, tile: TileIndex, figures: dict) -> None:
        self.store.record(TileMeasured(
            tile=tile.id, seconds=figures["seconds"], peak_rss_mb=peak_rss_mb(), engine=self.engine.label,
            pixels_written=figures["pixels_written"], pixels_read=figures["pixels_read"], external_job_id=self.job,
            batch=self.batch, **self.envelope))
        self.store.record(TileFinished(tile=tile.id, batch=self.batch, **self.envelope))
        self._forget(tile)

    def failed(self, tile: TileIndex, error: str) -> None:
        self.store.record(TileFailed(tile=tile.id, error=error, batch=self.batch, **self.envelope))
        self._forget(tile)

    def _forget(self, tile: TileIndex) -> None:
        with self._lock:
            self._running.pop(tile, None)

    def beats(self) -> list[TileBeat]:
        """The tiles being made and how far each is."""
        with self._lock:
            return [self._running[t] for t in sorted(self._running)]

    @contextlib.contextmanager
    def heartbeat(self, url: str, spool_dir: str, interval: float) -> Iterator[None]:
        """Say every ``interval`` seconds that the tiles being made are alive, how far each is and
        the job's memory now, from a thread with its own connection to the database at ``url``."""
        stop = threading.Event()
        dataset = self.envelope["dataset"]

        def beat() -> None:
            store = StatusStore(url, spool_dir=spool_dir)
            try:
                while not stop.wait(interval):
                    store.heartbeat(dataset, self.beats(), rss_mb=rss_mb())
            finally:
                store.close()

        thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
