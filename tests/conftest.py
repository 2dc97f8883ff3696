import os
import shutil

import pytest

from .helpers import REAL_DATA, uninterrupted_run as run_uninterrupted

# Figures of every comparison with the GDAL reference, printed at the end of the run so that the
# closing note (and anyone reading CI's log) sees what was compared, not just "passed".
COMPARISONS: list[str] = []


@pytest.fixture
def record():
    return COMPARISONS.append


def pytest_terminal_summary(terminalreporter):
    if COMPARISONS:
        terminalreporter.section("figures measured by the tests (comparisons with GDAL, status database)")
        for line in COMPARISONS:
            terminalreporter.write_line(line)


@pytest.fixture
def real_raster(tmp_path):
    """Copy one of ../shared/data/real/ into the test's folder (never write next to the originals)."""
    if not os.path.isdir(REAL_DATA):
        pytest.skip(f"real test rasters not found at {REAL_DATA} (set REAL_DATA_DIR)")

    def copy(name: str) -> str:
        dst = tmp_path / name
        shutil.copy(os.path.join(REAL_DATA, name), dst)
        os.chmod(dst, 0o644)
        return str(dst)

    return copy


@pytest.fixture(scope="session")
def pg_cluster():
    from .pg import PgCluster

    cluster = PgCluster()
    yield cluster
    cluster.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A fresh, empty status database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/status.sqlite"
    return request.getfixturevalue("pg_cluster").new_database()


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory):
    """One whole run of the interruptible config, shared by the interruption and controller tests
    (each of their interrupted runs must end with its results)."""
    return run_uninterrupted(tmp_path_factory.mktemp("uninterrupted"))
