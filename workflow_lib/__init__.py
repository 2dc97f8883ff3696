"""Tiled, memory-bounded resampling of large rasters onto one target grid.

The Snakemake workflow around this package is thin: rules declare files and resources, scripts
read the ``snakemake`` object and call :mod:`workflow_lib.jobs`. Everything a test wants to reach
lives here and is tested without Snakemake.
"""

__version__ = "0.1.0"
