"""Engines that resample one tile in memory-bounded chunks: NumPy block reductions (``blocks``)
and GDAL's warper (``warp``), driven by ``resample``."""
