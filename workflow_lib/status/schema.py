"""The status database's schema, as numbered migrations applied in order.

Written in the SQL that SQLite and PostgreSQL share: TEXT, INTEGER, BIGINT and DOUBLE PRECISION
(times are seconds since the epoch, UTC), so one text serves both backends.
"""

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            started_at DOUBLE PRECISION,
            ended_at DOUBLE PRECISION,
            status TEXT NOT NULL,
            host TEXT,
            run_user TEXT,
            config_digest TEXT,
            snakemake_version TEXT
        );
        CREATE TABLE datasets (
            name TEXT PRIMARY KEY,
            path TEXT,
            file_size BIGINT,
            crs TEXT,
            width INTEGER,
            height INTEGER,
            dtype TEXT,
            nodata TEXT,
            block_size TEXT,
            tile_count INTEGER,
            status TEXT NOT NULL,
            registered_at DOUBLE PRECISION
        );
        CREATE TABLE tiles (
            dataset TEXT NOT NULL,
            tile TEXT NOT NULL,
            status TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            run_id TEXT,
            started_at DOUBLE PRECISION,
            ended_at DOUBLE PRECISION,
            seconds DOUBLE PRECISION,
            peak_rss_mb DOUBLE PRECISION,
            host TEXT,
            pid INTEGER,
            external_job_id TEXT,
            engine TEXT,
            pixels_written BIGINT,
            heartbeat_at DOUBLE PRECISION,
            error TEXT,
            PRIMARY KEY (dataset, tile)
        );
        CREATE INDEX tiles_by_status ON tiles (status);
        CREATE TABLE events (
            id TEXT PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            run_id TEXT,
            dataset TEXT,
            tile TEXT,
            host TEXT,
            pid INTEGER,
            payload TEXT
        );
        CREATE INDEX events_by_time ON events (at);
        """,
    ),
    (
        2,
        """
        ALTER TABLE tiles ADD COLUMN batch TEXT;
        CREATE INDEX tiles_by_batch ON tiles (dataset, batch);
        """,
    ),
    (
        3,
        """
        ALTER TABLE tiles ADD COLUMN work DOUBLE PRECISION;
        ALTER TABLE tiles ADD COLUMN progress DOUBLE PRECISION;
        ALTER TABLE tiles ADD COLUMN pixels_read BIGINT;
        ALTER TABLE tiles ADD COLUMN rss_mb DOUBLE PRECISION;
        ALTER TABLE tiles ADD COLUMN mem_mb INTEGER;
        ALTER TABLE datasets ADD COLUMN total_pixels BIGINT;
        ALTER TABLE datasets ADD COLUMN valid_pixels BIGINT;
        ALTER TABLE datasets ADD COLUMN stat_min DOUBLE PRECISION;
        ALTER TABLE datasets ADD COLUMN stat_max DOUBLE PRECISION;
        ALTER TABLE datasets ADD COLUMN stat_mean DOUBLE PRECISION;
        ALTER TABLE datasets ADD COLUMN stat_std DOUBLE PRECISION;
        ALTER TABLE datasets ADD COLUMN histogram TEXT
        """,
    ),
    (
        4,
        """
        ALTER TABLE datasets ADD COLUMN error TEXT
        """,
    ),
    (
        5,
        # A run's own events (its run_started: which process runs it), found without a scan of every
        # event of every run: status and the dashboard ask on each refresh while a run is going.
        """
        CREATE INDEX events_by_kind_run ON events (kind, run_id)
        """,
    ),
]

CURRENT_VERSION = MIGRATIONS[-1][0]
