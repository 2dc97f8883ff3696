"""Merge one dataset's tiles into a Cloud-Optimized GeoTIFF (rule mosaic)."""

from workflow_lib.jobs import run_mosaic_job

run_mosaic_job(snakemake)  # noqa: F821 (injected by Snakemake)
