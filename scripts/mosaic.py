"""Merge one dataset's tiles into a Cloud-Optimized GeoTIFF (rule mosaic)."""

from workflow_lib.jobs import run_mosaic_job
from workflow_lib.runtime import exit_job_process

run_mosaic_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
