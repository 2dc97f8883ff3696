"""One dataset's statistics from its batches' manifests, when no mosaic is made (rule statistics)."""

from workflow_lib.jobs import run_statistics_job

run_statistics_job(snakemake)  # noqa: F821 (injected by Snakemake)
