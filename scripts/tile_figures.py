"""The report's map of tiles and per-tile figures, from the status database (rule tile_figures)."""

from workflow_lib.jobs import run_tile_figures_job

run_tile_figures_job(snakemake)  # noqa: F821 (injected by Snakemake)
