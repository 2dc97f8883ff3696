"""One dataset's statistics from its batches' manifests, when no mosaic is made (rule statistics)."""

from workflow_lib.jobs import run_statistics_job
from workflow_lib.runtime import exit_job_process

run_statistics_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
