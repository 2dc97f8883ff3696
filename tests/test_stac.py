"""The STAC catalog of a run (mosaics.stac), read back with pystac as a catalogue would (no network:
no schema is downloaded): one item per dataset, its assets the run's files with their true sizes
and checksums, the grid's projection, the statistics, and where the results came from."""

import datetime
import hashlib
import json
import os
import subprocess

import numpy as np
import pytest
import rasterio

from .helpers import REPO

pystac = pytest.importorskip("pystac")


def sha256_multihash(path) -> str:
    with open(path, "rb") as f:
        return "1220" + hashlib.sha256(f.read()).hexdigest()


@pytest.mark.integration
def test_the_catalog_describes_every_product_and_where_it_came_from(uninterrupted_run):
    results = uninterrupted_run.workdir / "results"
    collection = pystac.read_file(str(results / "stac" / "collection.json"))
    assert isinstance(collection, pystac.Collection)
    items = {item.id: item for item in collection.get_items()}
    datasets = sorted(p[:-5] for p in os.listdir(results / "datasets"))
    assert sorted(items) == datasets
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for name, item in items.items():
        # Every asset is a file (or the store) of the run, with its size and SHA-256.
        assert {"cog", "zarr", "thumbnail", "statistics"} <= set(item.assets), name
        for key, asset in item.assets.items():
            path = asset.get_absolute_href()
            assert os.path.exists(path), (name, key, path)
            if os.path.isfile(path):
                assert asset.extra_fields["file:size"] == os.path.getsize(path)
                assert asset.extra_fields["file:checksum"] == sha256_multihash(path), (name, key)
        assert item.assets["cog"].get_absolute_href() == str(results / "mosaics" / f"{name}.tif")
        assert item.assets["zarr"].extra_fields["onegrid:array"] == name
        # The projection is the grid's, as the mosaic itself says it.
        with rasterio.open(results / "mosaics" / f"{name}.tif") as src:
            assert item.properties["proj:shape"] == [src.height, src.width]
            assert item.properties["proj:transform"] == list(src.transform)[:6]
            assert item.properties["proj:code"] == f"EPSG:{src.crs.to_epsg()}"
            assert item.properties["proj:bbox"] == list(src.bounds)
            nodata = src.nodata
        # The bbox in longitude and latitude holds the grid's corners.
        left, bottom, right, top = item.bbox
        assert -180 <= left < right <= 180 and -90 <= bottom < top <= 90
        # The raster extension: nodata and statistics, those of the statistics file.
        with open(results / "statistics" / f"{name}.json") as f:
            stats = json.load(f)
        band = item.assets["cog"].extra_fields["raster:bands"][0]
        assert band["data_type"] == stats["dtype"]
        assert band["nodata"] == nodata or (band["nodata"] == "nan" and np.isnan(nodata))
        assert band["statistics"]["mean"] == stats["mean"] and band["statistics"]["maximum"] == stats["max"]
        # Provenance: versions, the workflow's commit, the config's digest, the method, every input.
        software = item.properties["processing:software"]
        assert software["gdal"] == rasterio.__gdal_version__ and software["rasterio"] == rasterio.__version__
        assert software["numpy"] == np.__version__ and "onegrid" in software and "zarr" in software
        assert item.properties["onegrid:git_commit"].split("-")[0] == head
        assert item.properties["onegrid:config_digest"].startswith("sha256:")
        with open(results / "datasets" / f"{name}.json") as f:
            record = json.load(f)["dataset"]
        assert item.properties["onegrid:method"] == record["settings"]["method"]
        (source,) = item.properties["onegrid:inputs"]
        assert source["href"] == record["header"]["path"] and source["size"] == record["header"]["size_bytes"]
    # The collection: the run's extent, its two stacks and the per-cell table (the shared run has it on).
    assert set(collection.assets) == {"stack", "zarr", "table"}
    assert collection.assets["stack"].extra_fields["file:checksum"] == sha256_multihash(results / "stack.tif")
    table = collection.assets["table"]
    assert table.media_type == "application/vnd.apache.parquet"
    assert os.path.samefile(table.get_absolute_href(), results / "table")
    # Self-contained: every link and asset is relative, so the folder can move.
    for path in (results / "stac").rglob("*.json"):
        text = path.read_text()
        assert str(results) not in text, path


def test_a_grid_across_the_antimeridian_has_a_bbox_and_geometry_that_do_not_go_round_the_other_way():
    """A grid on PDC Mercator (EPSG:3832, centred on 150 E) from 168 E to 165 W: its STAC bbox has
    west greater than east and its geometry is two polygons, one each side of 180 degrees (GeoJSON,
    RFC 7946), which together span 27 degrees of longitude, not 333. A grid that does not cross
    keeps one polygon."""
    from affine import Affine
    from rasterio.crs import CRS
    from shapely.geometry import shape

    from workflow_lib.mosaics.stac import bbox_geometry, bbox_wgs84
    from workflow_lib.planning.grid import TargetGrid

    pacific = TargetGrid(CRS.from_epsg(3832), Affine(10000, 0, 2e6, 0, -10000, -3e6), 300, 200, 64)
    west, south, east, north = bbox = bbox_wgs84(pacific)
    assert 167 < west < 169 and -166 < east < -164 and west > east
    geometry = bbox_geometry(bbox)
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2
    parts = shape(geometry)
    assert all(-180 <= x <= 180 for x in (parts.bounds[0], parts.bounds[2]))
    assert abs(sum(p.bounds[2] - p.bounds[0] for p in parts.geoms) - (360 - (west - east))) < 1e-9
    item = pystac.Item("p", geometry, bbox, datetime=datetime.datetime(2026, 1, 1), properties={})
    assert pystac.Item.from_dict(item.to_dict()).bbox == bbox

    europe = TargetGrid(CRS.from_epsg(3035), Affine(25000, 0, 2.5e6, 0, -25000, 5.5e6), 200, 160, 64)
    geometry = bbox_geometry(bbox_wgs84(europe))
    assert geometry["type"] == "Polygon" and shape(geometry).bounds[0] < shape(geometry).bounds[2]
