"""Catch jobs whose reads stop making progress, instead of letting them hang for hours.

A read from a dead network mount or a wedged disk blocks inside GDAL forever. The job ticks the
watchdog after every chunk it reads and writes; if no tick comes for ``timeout`` seconds, the
watchdog writes a clear message and the stack of every thread to the job's log and ends the
process, so that Snakemake sees a failed job (and may retry it with --retries).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)

STALLED_EXIT_CODE = 124  # as timeout(1)
# A wake-up this much later than asked means the process was stopped, not that reads hung.
FROZEN_GAP_S = 5.0


class Watchdog:
    def __init__(self, timeout: float, what: str):
        self.timeout = float(timeout)
        self.what = what
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def tick(self) -> None:
        self._last = time.monotonic()

    def __enter__(self) -> "Watchdog":
        self.tick()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        period = min(1.0, self.timeout / 10)
        woke = time.monotonic()
        while not self._stop.wait(period):
            now = time.monotonic()
            if now - woke > FROZEN_GAP_S + period:
                # The watchdog itself was not running: the process was frozen (SIGSTOP, `pause
                # --freeze`) or the machine slept. Time spent frozen is not a stall.
                self._last += now - woke - period
            woke = now
            idle = now - self._last
            if idle > self.timeout:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        log.error("StallError: %s made no progress for %.0f s (stall_timeout %.0f s): stopping the job. "
                  "Where it was stuck:", self.what, idle, self.timeout)
        stream = _log_stream()
        for handler in logging.getLogger().handlers:
            handler.flush()
        faulthandler.dump_traceback(file=stream, all_threads=True)
        stream.flush()
        os._exit(STALLED_EXIT_CODE)  # the stuck read cannot be interrupted; end the process


def _log_stream():
    """The job's log file if there is one (the traceback belongs next to the message)."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None and hasattr(stream, "fileno"):
            return stream
    return sys.stderr
