"""The compiled block kernels against the NumPy block engine on one 4096 x 4096 window of the
benchmark's inputs (made by bench/run.py into bench/work/), reduced x4, in one process.

    .venv/bin/python bench/kernels.py [WORKDIR]
"""

from __future__ import annotations

import os
import sys
import time

import rasterio
from rasterio.windows import Window

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from workflow_lib.engines.blocks import reduce_blocks, valid_mask  # noqa: E402
from workflow_lib.engines.kernels import reduce_blocks_compiled  # noqa: E402


def main() -> None:
    work = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "bench", "work")
    for name, method, dst_nodata in (("uint8_40000.tif", "mode", 0), ("float32_40000.tif", "average", -9999.0)):
        with rasterio.open(os.path.join(work, name)) as src:
            started = time.perf_counter()
            data = src.read(1, window=Window(8192, 8192, 4096, 4096))
            read_s = time.perf_counter() - started
            nodata, dtype = src.nodata, src.dtypes[0]
        reduce_blocks_compiled(data, None, nodata, 4, 4, method, dtype, dst_nodata)  # load or compile
        t0 = time.perf_counter()
        ours = reduce_blocks_compiled(data, None, nodata, 4, 4, method, dtype, dst_nodata)
        t1 = time.perf_counter()
        ref = reduce_blocks(data, valid_mask(data, nodata), 4, 4, method, dtype, dst_nodata)
        t2 = time.perf_counter()
        print(f"{method} {dtype} 4096x4096 -> 1024x1024: decode {read_s:.3f} s, compiled {t1 - t0:.3f} s, "
              f"numpy (mask + reduction) {t2 - t1:.3f} s, equal {bool((ours == ref).all())}")


if __name__ == "__main__":
    main()
