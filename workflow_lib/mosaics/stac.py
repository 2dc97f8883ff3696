"""A STAC catalog of a run's products, ``results/stac/``: one collection for the run, one item per
dataset, with where each product came from.

Each item has assets for the dataset's COG mosaic, its array in the Zarr store, its quicklook and
its statistics (those the run made, by output.formats); the projection extension (the grid's CRS,
shape, transform and bbox), the raster extension (nodata, data type, statistics), the file
extension (size, and a SHA-256 multihash of each file) and the provenance: the workflow's version
and git commit, GDAL's, rasterio's and numpy's, the digest of the config, the dataset's method and
engine, and every input (path or URL, size, modification time or ETag). The catalog is
self-contained (relative links): it moves with the results folder. Nothing here downloads a
schema or needs the network, except a HEAD request per remote input for its ETag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess

import numpy as np
import rasterio
from rasterio.warp import transform_bounds

from workflow_lib.atomic import atomic_path
from workflow_lib.domain import (OutputFormat, mosaic_path, quicklook_path, stac_collection_path, stack_path,
                                 statistics_path, table_dir, virtual_mosaic_path, zarr_store_path)
from workflow_lib.mosaics.zarr_store import folder_size
from workflow_lib.planning.grid import TargetGrid
from workflow_lib.planning.plan import DatasetPlan
from workflow_lib.secrets import redact
from workflow_lib.sources.paths import is_remote, member_paths, stamp
from workflow_lib.sources.remote import remote_identity

log = logging.getLogger(__name__)

COLLECTION_ID = "onegrid"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
# GDAL's VRT is XML; no media type of its own is registered.
VRT_MEDIA_TYPE = "application/xml"
_CHUNK = 1 << 22
# Besides the projection extension (pystac adds it): their fields are set here by hand.
EXTENSIONS = ("https://stac-extensions.github.io/raster/v1.1.0/schema.json",
              "https://stac-extensions.github.io/file/v2.1.0/schema.json",
              "https://stac-extensions.github.io/processing/v1.2.0/schema.json")


def checksum(path: str) -> str:
    """The file's SHA-256 as a multihash (what the file extension's ``file:checksum`` holds)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return "1220" + h.hexdigest()


def software() -> dict[str, str]:
    """The versions that made the results."""
    versions = {"gdal": rasterio.__gdal_version__, "rasterio": rasterio.__version__, "numpy": np.__version__}
    for package in ("onegrid", "snakemake", "zarr"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_commit(folder: str) -> str | None:
    """The commit of the workflow's own checkout (None outside one, or without git)."""
    try:
        out = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def config_digest(config: dict) -> str:
    """SHA-256 of the validated config (defaults filled in, passwords masked), canonical JSON."""
    text = json.dumps(config, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def inputs_of(name: str, spec) -> list[dict]:
    """Every input file of a dataset, as the run read it: its path or URL (password masked), size and
    modification time (a local file), or ETag and Last-Modified (a remote object)."""
    out = []
    for path in member_paths(name, spec):
        if is_remote(path):
            found = remote_identity(path) or {"size": -1}
            out.append({"href": redact(path), **{k: v for k, v in found.items() if v not in ("", None)}})
        else:
            size, mtime_ns = stamp(path)
            out.append({"href": redact(path), "size": size,
                        "modified": dt.datetime.fromtimestamp(mtime_ns / 1e9, dt.timezone.utc).isoformat()})
    return out


def bbox_wgs84(grid: TargetGrid) -> list[float]:
    """The grid's bounds in longitude and latitude, as STAC wants them: west greater than east
    when the grid crosses the antimeridian (GDAL's transform_bounds says so that way)."""
    left, bottom, right, top = transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=101)
    return [left, bottom, right, top]


def bbox_geometry(bbox: list[float]) -> dict:
    """A GeoJSON geometry of a bbox: a polygon, or across the antimeridian (west > east) two, one
    each side of it (RFC 7946, 3.1.9), rather than one that spans the other way round the globe."""
    west, south, east, north = bbox

    def ring(w: float, e: float) -> list:
        return [[[w, south], [e, south], [e, north], [w, north], [w, south]]]

    if west <= east:
        return {"type": "Polygon", "coordinates": ring(west, east)}
    return {"type": "MultiPolygon", "coordinates": [ring(west, 180.0), ring(-180.0, east)]}


def _raster_bands(dataset: DatasetPlan, stats: dict) -> list[dict]:
    settings = dataset.settings
    names = dataset.band_names or (dataset.name,)
    nodata = settings.dst_nodata
    bands = []
    for band in names:
        entry = {"name": band, "data_type": settings.dst_dtype,
                 "nodata": "nan" if isinstance(nodata, float) and np.isnan(nodata) else nodata}
        if len(names) == 1 and stats.get("valid_pixels"):
            entry["statistics"] = {"minimum": stats["min"], "maximum": stats["max"], "mean": stats["mean"],
                                   "stddev": stats["std"], "valid_percent": 100 * stats["valid_share"]}
        bands.append(entry)
    return bands


def write_catalog(results_dir: str, grid: TargetGrid, datasets: list[DatasetPlan],
                  formats: tuple[OutputFormat, ...], config: dict, workflow_dir: str,
                  created: dt.datetime | None = None) -> str:
    """Write the catalog under results_dir/stac; returns the collection's file."""
    import pystac
    from pystac.extensions.projection import ProjectionExtension

    created = created or dt.datetime.now(dt.timezone.utc)
    bbox = bbox_wgs84(grid)
    geometry = bbox_geometry(bbox)
    # The processing extension's words where it has them (software and versions), ours for the rest.
    provenance = {"processing:software": software(), "onegrid:git_commit": git_commit(workflow_dir),
                  "onegrid:config_digest": config_digest(config),
                  "onegrid:formats": [f.value for f in formats]}
    collection = pystac.Collection(
        id=COLLECTION_ID,
        title="Datasets resampled onto one grid",
        description=(f"{len(datasets)} dataset(s) on one {grid.width} x {grid.height} grid in "
                     f"{grid.crs.to_string()}, made by the onegrid workflow on {created:%Y-%m-%d}."),
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[created, None]])),
        license="other",
        extra_fields={**provenance, "onegrid:created": created.isoformat()},
        stac_extensions=list(EXTENSIONS),
    )
    out_dir = os.path.abspath(os.path.dirname(stac_collection_path(results_dir)))
    for dataset in datasets:
        name = dataset.name
        with open(statistics_path(name, results_dir)) as f:
            stats = json.load(f)
        item = pystac.Item(
            id=name, geometry=geometry, bbox=bbox, datetime=created,
            properties={"title": name, "processing:lineage": (
                            f"resampled onto the grid by onegrid, method {dataset.settings.method.value}, "
                            f"{dataset.settings.engine.label} engine, tile by tile"),
                        "onegrid:method": dataset.settings.method.value,
                        "onegrid:engine": dataset.settings.engine.label,
                        "onegrid:engine_reason": dataset.settings.engine_reason,
                        "onegrid:bands": list(dataset.band_names or (name,)),
                        "onegrid:inputs": inputs_of(name, config["datasets"][name]["path"]), **provenance},
        )
        projection = ProjectionExtension.ext(item, add_if_missing=True)
        epsg = grid.crs.to_epsg()
        projection.code = f"EPSG:{epsg}" if epsg else None
        if not epsg:
            projection.wkt2 = grid.crs.to_wkt()
        projection.shape, projection.transform = [grid.height, grid.width], list(grid.transform)[:6]
        projection.bbox = list(grid.bounds)
        raster = {"raster:bands": _raster_bands(dataset, stats)}
        if OutputFormat.COG in formats:
            path = mosaic_path(name, results_dir)
            item.add_asset("cog", _file_asset(pystac, path, pystac.MediaType.COG, ["data"],
                                              f"{name}: Cloud-Optimized GeoTIFF mosaic", raster))
        else:
            # Without mosaics, the VRT over the dataset's tiles is what GIS software opens.
            item.add_asset("vrt", _file_asset(pystac, virtual_mosaic_path(name, results_dir), VRT_MEDIA_TYPE,
                                              ["data"], f"{name}: GDAL virtual mosaic (VRT) over its tiles", raster))
        if OutputFormat.ZARR in formats:
            store = os.path.abspath(zarr_store_path(results_dir))
            item.add_asset("zarr", pystac.Asset(
                href=store, media_type=ZARR_MEDIA_TYPE, roles=["data"],
                title=f"{name}: array '{name}' of the run's Zarr v3 store",
                extra_fields={**raster, "file:size": folder_size(os.path.join(store, name)),
                              "onegrid:array": name,
                              "xarray:open_kwargs": {"engine": "zarr", "consolidated": True}}))
        item.add_asset("thumbnail", _file_asset(pystac, quicklook_path(name, results_dir), pystac.MediaType.PNG,
                                                ["thumbnail", "overview"], f"{name}: quicklook"))
        item.add_asset("statistics", _file_asset(pystac, statistics_path(name, results_dir), pystac.MediaType.JSON,
                                                 ["metadata"], f"{name}: statistics and histogram",
                                                 {"onegrid:histogram": stats.get("histogram")}))
        item.stac_extensions.extend(EXTENSIONS)
        collection.add_item(item)
    if OutputFormat.COG in formats:
        collection.add_asset("stack", _file_asset(pystac, stack_path(results_dir), pystac.MediaType.COG, ["data"],
                                                  "every dataset, one band each (GeoTIFF)"))
    if OutputFormat.ZARR in formats:
        collection.add_asset("zarr", pystac.Asset(
            href=os.path.abspath(zarr_store_path(results_dir)), media_type=ZARR_MEDIA_TYPE, roles=["data"],
            title="every dataset, one array each (Zarr v3)",
            extra_fields={"file:size": folder_size(zarr_store_path(results_dir)),
                          "xarray:open_kwargs": {"engine": "zarr", "consolidated": True}}))
    if OutputFormat.PARQUET in formats:
        collection.add_asset("table", pystac.Asset(
            href=os.path.abspath(table_dir(results_dir)), media_type=PARQUET_MEDIA_TYPE, roles=["data"],
            title="one row per valid cell, one column per dataset band (a folder of Parquet files, one table)",
            extra_fields={"file:size": folder_size(table_dir(results_dir))}))
    collection.normalize_hrefs(out_dir)
    collection.make_all_asset_hrefs_relative()
    for asset in collection.assets.values():  # the collection's own assets are not made relative above
        asset.href = os.path.relpath(asset.href, out_dir)
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, stac_io=_atomic_stac_io(pystac))
    # Items of datasets no longer in the run.
    for entry in os.listdir(out_dir):
        if os.path.isdir(os.path.join(out_dir, entry)) and entry not in {d.name for d in datasets}:
            shutil.rmtree(os.path.join(out_dir, entry))
    return os.path.join(out_dir, "collection.json")


def _atomic_stac_io(pystac):
    """pystac's file writer, each file written under a temporary name and renamed (atomic.py)."""

    class AtomicStacIO(pystac.stac_io.DefaultStacIO):
        def write_text_to_href(self, href: str, txt: str) -> None:
            with atomic_path(href) as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.write(txt)

    return AtomicStacIO()


def _file_asset(pystac, path: str, media_type: str, roles: list[str], title: str, extra: dict | None = None):
    return pystac.Asset(href=os.path.abspath(path), media_type=media_type, roles=roles, title=title,
                        extra_fields={**(extra or {}), "file:size": os.path.getsize(path),
                                      "file:checksum": checksum(path)})
