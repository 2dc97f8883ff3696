"""A quicklook of class fractions: the example's land cover (EPSG:3035, 100 m) onto UTM zone 32N at
1 km, through the workflow, one panel per class share and one for the coverage.

    .venv/bin/python bench/quicklook_fractions.py docs/images/quicklook-fractions.png

Needs the example's inputs (`make example`). Prints each band's name, range and mean.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import yaml  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "fractions.png")
    source = os.path.join(REPO, "data", "example", "landcover.tif")
    if not os.path.exists(source):
        sys.exit(f"{source} not found: run `make example` first")
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "config"))
        config = {"target": {"crs": "EPSG:32632", "resolution": 1000},
                  "datasets": {"landcover": {"path": source, "method": "fractions",
                                             "classes": {1: "class 1", 3: "class 3", 5: "class 5"},
                                             "coverage": True}}}
        with open(os.path.join(work, "config", "config.yaml"), "w") as f:
            yaml.safe_dump(config, f)
        subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", os.path.join(REPO, "Snakefile"),
                        "--directory", work, "--cores", "2", "--quiet", "all", "--",
                        "results/mosaics/landcover.tif"], check=True)
        with rasterio.open(os.path.join(work, "results", "mosaics", "landcover.tif")) as src:
            bands, names = src.read(), src.descriptions
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), constrained_layout=True)
    for ax, band, name in zip(axes, bands, names):
        shown = ax.imshow(band, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
        print(f"{name}: {np.nanmin(band):.3f} .. {np.nanmax(band):.3f}, mean {np.nanmean(band):.3f}")
    fig.colorbar(shown, ax=axes, shrink=0.8, label="share of the 1 km pixel")
    fig.suptitle("landcover (EPSG:3035, 100 m) onto EPSG:32632 at 1 km: method fractions, coverage: true")
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
