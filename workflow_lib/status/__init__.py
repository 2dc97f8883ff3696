"""Job status: a database of runs, datasets and tiles, and the status report read from it."""

from workflow_lib.status.store import (DEFAULT_SPOOL_DIR, DEFAULT_URL, URL_ENV, Event, StatusStore, TileBeat, redact,
                                      resolve_url)

__all__ = ["DEFAULT_SPOOL_DIR", "DEFAULT_URL", "URL_ENV", "Event", "StatusStore", "TileBeat", "redact", "resolve_url"]
