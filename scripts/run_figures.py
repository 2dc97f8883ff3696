"""The report's pages of the run: the tile map, the per-tile figures, the config (rule run_figures)."""

from workflow_lib.jobs import run_figures_job
from workflow_lib.runtime import exit_job_process

run_figures_job(snakemake)  # noqa: F821 (injected by Snakemake)
exit_job_process()  # its outputs are closed: skip the interpreter's teardown
