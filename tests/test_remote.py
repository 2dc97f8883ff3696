"""Remote inputs: HTTP range requests and S3, on loopback servers started here, with faults.

A folder over HTTP (tests/servers.py) and moto's S3 server, each behind a proxy that answers
every 4th request with 503 and holds every 5th for a while. The results must be identical to the
same file read locally, and credentials must never reach a log.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from affine import Affine

from workflow_lib.config import validate_config
from workflow_lib.errors import InputRasterError
from workflow_lib.planning.plan import build_plan, plan_cache_key

from .helpers import REPO, read_band, refused_batch, run_tiles_and_mosaics, smooth_field, snakemake, write_config, write_raster
from .servers import FaultyProxy, FileServer

SECRET = "wJalrXUtnFEMI-never-in-a-log-K7MDENG"
UTM = Affine(30, 0, 504000, 0, -30, 4608000)


def config_for(path, **extra):
    return {"target": {"crs": "EPSG:32633", "resolution": 90}, "tile_size": 128,
            "datasets": {"dem": {"path": path, "method": "average", **extra}}}


@pytest.fixture
def dem(tmp_path):
    values = smooth_field(900, 1000, seed=7)
    values[100:160, 300:420] = -9999
    folder = tmp_path / "served"
    folder.mkdir()
    return write_raster(folder / "dem.tif", values, "EPSG:32633", UTM, -9999.0)


@pytest.fixture
def quick_retries(monkeypatch):
    # GDAL's own setting, from the environment, wins over the workflow's default (0.5 s): the
    # tests inject dozens of faults and need not wait for each.
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.02")


@pytest.fixture
def http(dem, quick_retries):
    server = FileServer(os.path.dirname(dem))
    proxy = FaultyProxy(server.url.split("//")[1])
    yield server, proxy
    proxy.close()
    server.close()


@pytest.fixture
def s3(monkeypatch, quick_retries):
    """moto's S3 in server mode on loopback, behind the faulty proxy; GDAL and boto3 pointed at it
    through the usual AWS variables."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = FaultyProxy(f"{host}:{port}")
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIAWORKFLOWTEST", "AWS_SECRET_ACCESS_KEY": SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                       "AWS_S3_ENDPOINT": proxy.url.split("//")[1], "AWS_HTTPS": "NO",
                       "AWS_VIRTUAL_HOSTING": "FALSE"}.items():
        monkeypatch.setenv(key, value)
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
    client.create_bucket(Bucket="layers")
    yield client, proxy
    proxy.close()
    server.stop()


def test_http_with_faults_gives_the_local_result(tmp_path, dem, http, record):
    server, proxy = http
    plan, remote = run_tiles_and_mosaics(config_for(f"{proxy.url}/dem.tif"), tmp_path / "remote")
    assert plan.datasets["dem"].header.path == f"/vsicurl/{proxy.url}/dem.tif"
    _, local = run_tiles_and_mosaics(config_for(dem), tmp_path / "local")
    assert np.array_equal(read_band(remote["dem"]), read_band(local["dem"]))
    # Faults were met and survived; the pixels came by range requests, not one download.
    assert proxy.failed >= 3 and proxy.delayed >= 3
    ranged = [r for r in server.requests if r[0] == "GET" and r[2]]
    assert ranged and all(m == "HEAD" or r for m, _, r in server.requests)
    record(f"HTTP input, {proxy.count} requests of which {proxy.failed} answered 503 and {proxy.delayed} delayed: "
           "mosaic identical to the local file's")


def test_http_errors_name_the_dataset_and_the_url(dem, http):
    server, _ = http
    with pytest.raises(InputRasterError) as err:
        build_plan(validate_config(config_for(f"{server.url}/missing.tif")))
    assert str(err.value) == (f"dataset 'dem' ({server.url}/missing.tif): the server has no such object (HTTP 404): "
                              f"check the URL {server.url}/missing.tif")
    server.forbidden.add("dem.tif")
    with pytest.raises(InputRasterError, match=r"dataset 'dem' \(.*/dem\.tif\): access denied \(HTTP 403\)"):
        build_plan(validate_config(config_for(f"{server.url}/dem.tif")))


PASSWORD = "Pa55word99-never-written"
PG_PASSWORD = "Pg-secret-never-written"


@pytest.mark.integration
def test_passwords_in_urls_are_never_printed_or_written(tmp_path, dem, pg_cluster):
    """An input behind HTTP Basic authentication, its password in the URL, and a status database
    URL with a password: the run reads the input, and neither password is in the console or in any
    file under the working folder but the user's own config."""
    server = FileServer(os.path.dirname(dem), credentials=("bob", PASSWORD))
    try:
        host = server.url.split("//")[1]
        work = tmp_path / "run"
        config = config_for(f"http://bob:{PASSWORD}@{host}/dem.tif")
        database = pg_cluster.new_database()
        config["database"] = {"url": database.replace("postgresql://postgres@", f"postgresql://postgres:{PG_PASSWORD}@")}
        write_config(work, config)
        console = [snakemake(work, "-n", "--cores", "2"), snakemake(work, "--cores", "2", "--resources", "mem_mb=2000")]
        for command in (["status"], ["status", "--json"], ["results"], ["plan"]):
            console.append(subprocess.run([sys.executable, "-m", "workflow_lib", *command], cwd=work,
                                          capture_output=True, text=True, timeout=120,
                                          env={**os.environ, "PYTHONPATH": REPO}))
        _, local = run_tiles_and_mosaics(config_for(dem), tmp_path / "local")
        assert np.array_equal(read_band(work / "results" / "mosaics" / "dem.tif"), read_band(local["dem"]))
        text = "".join(p.stdout + p.stderr for p in console)
        assert "status database: postgresql://postgres:***@127.0.0.1" in text
        assert PASSWORD not in text and PG_PASSWORD not in text
        users_config = str(work / "config" / "config.yaml")
        for folder, _, files in os.walk(work):
            for name in files:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    content = f.read()
                assert PASSWORD.encode() not in content or path == users_config, path
                assert PG_PASSWORD.encode() not in content or path == users_config, path
        # The STAC catalog names the input as the plan does (GDAL's path, without the user and
        # password), with the server's size, ETag and Last-Modified.
        with open(work / "results" / "stac" / "dem" / "dem.json") as f:
            (source,) = json.load(f)["properties"]["onegrid:inputs"]
        assert source["href"] == f"/vsicurl/http://{host}/dem.tif" and source["size"] == os.path.getsize(dem), source
        assert source["etag"] and source["last-modified"], source
        # The run's rows went to the database given, through its URL with the password.
        import psycopg

        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT status FROM runs").fetchall() == [("finished",)]
            assert conn.execute("SELECT path FROM datasets").fetchall() == [(f"/vsicurl/http://{host}/dem.tif",)]
        # A wrong password, and a server that is not there, said as such (and without the password).
        with pytest.raises(InputRasterError) as err:
            build_plan(validate_config(config_for(f"http://bob:wrong-{PASSWORD}@{host}/dem.tif")))
        assert "access denied (HTTP 401)" in str(err.value) and PASSWORD not in str(err.value), err.value
    finally:
        server.close()
    with pytest.raises(InputRasterError) as err:
        build_plan(validate_config(config_for(f"http://bob:{PASSWORD}@{host}/dem.tif")))
    assert f"connection refused by {host}" in str(err.value) and PASSWORD not in str(err.value), err.value


def test_gdal_paths_with_a_password_and_archives_are_read_and_masked(tmp_path, dem):
    """GDAL's own spellings: /vsicurl/ with the user and password in its URL, and a zip archive,
    local and over HTTP (/vsizip//vsicurl/...). Each is planned and read (the same tiles as the
    file read locally), and no password is in the plan."""
    import json
    import zipfile

    from workflow_lib.engines.batch import run_batch

    with zipfile.ZipFile(os.path.join(os.path.dirname(dem), "dem.zip"), "w") as archive:
        archive.write(dem, "inner/dem.tif")
    local = build_plan(validate_config(config_for(dem)))
    tiles = list(local.datasets["dem"].tiles)[:4]
    expected = str(tmp_path / "expected")
    run_batch(local.datasets["dem"], local.grid, "b", tiles, expected, mem_mb=400)
    server = FileServer(os.path.dirname(dem), credentials=("bob", PASSWORD))
    try:
        url = f"http://bob:{PASSWORD}@{server.url.split('//')[1]}"
        folder = os.path.dirname(dem)
        for i, path in enumerate([f"/vsicurl/{url}/dem.tif", f"/vsizip//vsicurl/{url}/dem.zip/inner/dem.tif",
                                  f"/vsizip/{os.path.relpath(folder)}/dem.zip/inner/dem.tif"]):
            plan = build_plan(validate_config(config_for(path)))
            d = plan.datasets["dem"]
            assert PASSWORD not in json.dumps(d.to_dict()) and PASSWORD not in d.header.path, path
            out = str(tmp_path / f"read{i}")
            assert sorted(run_batch(d, plan.grid, "b", tiles, out, mem_mb=400).made) == sorted(tiles), path
            for t in tiles:
                assert np.array_equal(read_band(os.path.join(out, f"{t}.tif")),
                                      read_band(os.path.join(expected, f"{t}.tif"))), path
    finally:
        server.close()


def test_a_remote_object_replaced_after_planning_fails_its_tiles_and_leaves_none(tmp_path, dem):
    """As for a local file (tests/test_batches.py): the object's size, ETag and Last-Modified are
    asked again by each tile; a replaced object fails the tiles, naming the URL, and none is left."""
    from workflow_lib.engines.batch import run_batch

    server = FileServer(os.path.dirname(dem))
    try:
        url = f"{server.url}/dem.tif"
        plan = build_plan(validate_config(config_for(url)))
        d = plan.datasets["dem"]
        tiles = list(d.tiles)[:3]
        assert sorted(run_batch(d, plan.grid, "b", tiles, str(tmp_path / "same"), mem_mb=400).made) == sorted(tiles)
        write_raster(dem, smooth_field(900, 1000, seed=8), "EPSG:32633", UTM, -9999.0)  # new pixels, new ETag
        assert refused_batch(d, plan.grid, tiles, str(tmp_path / "replaced")) == (
            f"dataset 'dem' (/vsicurl/{url}): changed since the run was planned (another size, ETag or "
            "Last-Modified on the server): run again, and the next run plans with it")
    finally:
        server.close()
    gone = refused_batch(d, plan.grid, tiles, str(tmp_path / "gone"))
    assert "cannot be asked whether it is still the object the run planned with" in gone


def test_a_remote_member_of_a_many_file_dataset_replaced_after_planning_fails_the_tiles(tmp_path, dem, monkeypatch):
    """Two objects on a server as one dataset (a VRT of members): a member replaced after planning
    fails the tiles that a check reaches (every REMOTE_MEMBER_CHECK_REUSE_S, 0 here) and leaves none."""
    from workflow_lib.engines.batch import run_batch
    from workflow_lib.sources import members

    monkeypatch.setattr(members, "REMOTE_MEMBER_CHECK_REUSE_S", 0.0)
    east = write_raster(os.path.join(os.path.dirname(dem), "east.tif"), smooth_field(900, 1000, seed=3), "EPSG:32633",
                        UTM * Affine.translation(1000, 0), -9999.0)
    server = FileServer(os.path.dirname(dem))
    try:
        plan = build_plan(validate_config(config_for([f"{server.url}/dem.tif", f"{server.url}/east.tif"])),
                          cache_dir=str(tmp_path / "cache"))
        d = plan.datasets["dem"]
        tiles = list(d.tiles)[:3]
        assert sorted(run_batch(d, plan.grid, "b", tiles, str(tmp_path / "same"), mem_mb=400).made) == sorted(tiles)
        write_raster(east, smooth_field(900, 1000, seed=9), "EPSG:32633", UTM * Affine.translation(1000, 0), -9999.0)
        assert refused_batch(d, plan.grid, tiles, str(tmp_path / "replaced")) == (
            f"dataset 'dem' ({d.header.path}): one of its 2 member files changed since the run was planned (size or "
            "modification time, or ETag for a remote one): run again, and the next run plans with it")
    finally:
        server.close()


def test_a_changed_object_changes_the_plan(dem, http):
    server, _ = http
    config = validate_config(config_for(f"{server.url}/dem.tif"))
    before = plan_cache_key(config)
    assert plan_cache_key(config) == before  # the same object: the same plan
    os.utime(dem, ns=(1, os.stat(dem).st_mtime_ns + 10**9))  # the server's ETag and Last-Modified change
    assert plan_cache_key(config) != before


@pytest.mark.slow
def test_s3_with_faults_gives_the_local_result_also_as_files_of_a_dataset(tmp_path, monkeypatch, dem, s3):
    client, proxy = s3
    client.upload_file(dem, "layers", "dem/dem.tif")
    plan, remote = run_tiles_and_mosaics(config_for("s3://layers/dem/dem.tif"), tmp_path / "remote")
    assert plan.datasets["dem"].header.path == "/vsis3/layers/dem/dem.tif"
    _, local = run_tiles_and_mosaics(config_for(dem), tmp_path / "local")
    assert np.array_equal(read_band(remote["dem"]), read_band(local["dem"]))
    assert proxy.failed >= 3 and proxy.delayed >= 3
    # Two halves as two objects of one dataset: the same pixels again.
    values = read_band(dem)
    for name, rows in {"north": slice(0, 450), "south": slice(450, 900)}.items():
        part = write_raster(tmp_path / f"{name}.tif", values[rows], "EPSG:32633",
                            UTM @ Affine.translation(0, rows.start), -9999.0)
        client.upload_file(part, "layers", f"parts/{name}.tif")
    monkeypatch.chdir(tmp_path)  # the VRT of the two objects goes under .cache here
    _, halves = run_tiles_and_mosaics(config_for(["s3://layers/parts/north.tif", "s3://layers/parts/south.tif"]),
                                      tmp_path / "halves")
    assert np.array_equal(read_band(halves["dem"]), read_band(local["dem"]))
    with pytest.raises(InputRasterError, match=r"dataset 'dem' \(s3://layers/nothere\.tif\): the server has no such "
                                               r"object \(HTTP 404\)"):
        build_plan(validate_config(config_for("s3://layers/nothere.tif")))


@pytest.mark.integration
def test_s3_end_to_end_and_no_credentials_in_any_log(tmp_path, dem, s3):
    client, proxy = s3
    client.upload_file(dem, "layers", "dem.tif")
    work = tmp_path / "run"
    write_config(work, config_for("s3://layers/dem.tif"))
    dry = snakemake(work, "-n", "--cores", "2")
    run = snakemake(work, "--cores", "2", "--resources", "mem_mb=2000")
    _, local = run_tiles_and_mosaics(config_for(dem), tmp_path / "local")
    assert np.array_equal(read_band(work / "results" / "mosaics" / "dem.tif"), read_band(local["dem"]))
    assert proxy.failed >= 1
    # Not in the console, the logs, Snakemake's metadata, the status database or the results.
    assert SECRET not in dry.stdout + dry.stderr + run.stdout + run.stderr
    for folder, _, files in os.walk(work):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                assert SECRET.encode() not in f.read(), os.path.join(folder, name)
