"""The pictures and tables of ``snakemake --report``: a quicklook of each mosaic, the map of tiles
with their state and time, per-tile seconds and memory against what jobs were granted, each
dataset's statistics, and the run's config.

Every function reads files (the mosaic, its statistics from workflow_lib.statistics) or the status
database, and writes one file; matplotlib draws without a display (Agg). Cheap: a quicklook reads
the mosaic's overviews, never its full resolution.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402

from workflow_lib.atomic import atomic_path  # noqa: E402
from workflow_lib.domain import Method, TileIndex  # noqa: E402
from workflow_lib.mosaics.zarr_store import path_is_zarr_array, zarr_quicklook  # noqa: E402
from workflow_lib.status.queries import TileRecord  # noqa: E402
from workflow_lib.status.store import redact  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

QUICKLOOK_PIXELS = 800  # longest side of a quicklook
STATE_COLOURS = {"pending": "#d6d6d6", "running": "#f0ad4e", "done": "#2e8b57", "failed": "#d9534f"}


def quicklook_array(path: str, method: str, longest: int = QUICKLOOK_PIXELS) -> tuple[np.ma.MaskedArray, float]:
    """The mosaic at most ``longest`` pixels on its longest side, masked where nodata, and the
    factor it was reduced by. Read through GDAL's overview machinery: a COG mosaic serves it from
    its overviews (averaged, or nearest for classes), not from its full resolution. ``path`` may
    also be a dataset's array in the Zarr store (output.formats: [zarr]), read from its coarsest
    overview level at least ``longest`` pixels, every n-th pixel (its first band)."""
    if path_is_zarr_array(path):
        return zarr_quicklook(path, longest)
    with rasterio.open(path) as src:
        factor = max(1.0, max(src.width, src.height) / longest)
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        resampling = Resampling.nearest if Method(method).is_categorical else Resampling.average
        data = src.read(1, out_shape=shape, resampling=resampling, masked=True)
    if data.dtype.kind == "f":
        data = np.ma.masked_invalid(data)
    return data, factor


def write_quicklook(mosaic: str, statistics: str, out_path: str) -> None:
    """A PNG of the mosaic: a colour ramp with a colour bar for continuous data, one colour per
    class with a legend for mode and nearest datasets."""
    with open(statistics) as f:
        stats = json.load(f)
    name, method = stats["dataset"], stats["method"]
    data, factor = quicklook_array(mosaic, method)
    fig, ax = plt.subplots(figsize=(8, 8 * data.shape[0] / data.shape[1] + 0.6), dpi=100)
    hist = stats.get("histogram") or {}
    if Method(method).is_categorical and "values" in hist:
        classes = hist["values"]
        colours = plt.get_cmap("tab20")(np.arange(len(classes)) % 20)
        cmap = ListedColormap(colours)
        edges = [c - 0.5 for c in classes] + [classes[-1] + 0.5] if classes else [0, 1]
        # Classes need not be consecutive: map each to its own colour through the boundaries.
        norm = BoundaryNorm(sorted(set(edges)), cmap.N) if len(classes) > 1 else None
        ax.imshow(data, cmap=cmap, norm=norm, interpolation="nearest")
        shares = np.asarray(hist["counts"], float) / max(stats["valid_pixels"], 1)
        handles = [Patch(color=colours[i], label=f"{_number(c)} ({100 * s:.1f} %)")
                   for i, (c, s) in enumerate(zip(classes, shares))]
        ax.legend(handles=handles, title="class (share)", loc="center left", bbox_to_anchor=(1.01, 0.5),
                  fontsize=8)
    else:
        image = ax.imshow(data, cmap="viridis", interpolation="nearest",
                          vmin=stats.get("min"), vmax=stats.get("max"))
        fig.colorbar(image, ax=ax, shrink=0.8, label=f"{name} ({method})")
    ax.set_title(f"{name}: {method}, {100 * stats['valid_share']:.1f} % valid"
                 + (f", shown at 1:{factor:.0f}" if factor > 1 else ""))
    ax.set_axis_off()
    _save(fig, out_path)


def write_statistics_page(statistics: list[str], out_path: str) -> None:
    """One HTML page: a table per dataset of its statistics and a histogram."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Statistics</title><style>"
             "body{font:14px sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:.5em}"
             "td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}"
             "</style></head><body><h1>Statistics of the mosaics</h1>"
             "<p>Computed from the pixels as each tile was written and merged for its mosaic "
             "(no second pass over the data).</p>"]
    for path in statistics:
        with open(path) as f:
            s = json.load(f)
        rows = [("method", s["method"]), ("type", s["dtype"]), ("pixels", f"{s['total_pixels']:,}"),
                ("valid pixels", f"{s['valid_pixels']:,}"), ("valid share", f"{100 * s['valid_share']:.2f} %"),
                ("min", _number(s["min"])), ("max", _number(s["max"])), ("mean", _number(s["mean"])),
                ("standard deviation", _number(s["std"]))]
        parts.append(f"<h2>{html.escape(s['dataset'])}</h2><table>")
        parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows]
        parts.append("</table>")
        if s.get("histogram"):
            parts.append(f"<img alt='histogram of {html.escape(s['dataset'])}' "
                         f"src='data:image/png;base64,{_histogram_png(s)}'>")
    parts.append("</body></html>")
    with atomic_path(out_path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(parts))


def _histogram_png(s: dict) -> str:
    hist = s["histogram"]
    fig, ax = plt.subplots(figsize=(6, 2.4), dpi=90)
    if "values" in hist:
        ax.bar([_number(v) for v in hist["values"]], hist["counts"], color="#4a7ab5")
        ax.set_xlabel("class")
    else:
        edges = np.asarray(hist["edges"])
        ax.stairs(hist["counts"], edges, fill=True, color="#4a7ab5")
        ax.set_xlabel(s["dataset"])
    ax.set_ylabel("pixels")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def tile_frame(store) -> pd.DataFrame:
    """Every tile's row from the status database (``store`` None: none), with its place on the grid."""
    import pandas as pd  # here, not above: the summary's quicklooks and pages do without it (0.3 s)

    records = store.tile_records() if store is not None else []
    frame = pd.DataFrame([dataclasses.astuple(r) for r in records],
                         columns=[f.name for f in dataclasses.fields(TileRecord)])
    places = [TileIndex.parse(t) for t in frame["tile"]]
    frame["row"] = [p.row for p in places]
    frame["col"] = [p.col for p in places]
    return frame


def write_tile_map(frame: pd.DataFrame, out_path: str) -> None:
    """Per dataset, its tiles on the grid: the state of each, and the seconds each took."""
    names = list(dict.fromkeys(frame["dataset"]))
    fig, axes = plt.subplots(len(names) or 1, 2, figsize=(10, 3.6 * max(len(names), 1)), squeeze=False, dpi=90)
    for (ax_state, ax_time), name in zip(axes, names):
        d = frame[frame["dataset"] == name]
        r0, c0 = d["row"].min(), d["col"].min()
        shape = (d["row"].max() - r0 + 1, d["col"].max() - c0 + 1)
        states = list(STATE_COLOURS)
        codes = np.full(shape, np.nan)
        codes[d["row"] - r0, d["col"] - c0] = [states.index(s) if s in states else 0 for s in d["status"]]
        ax_state.imshow(np.ma.masked_invalid(codes), cmap=ListedColormap(list(STATE_COLOURS.values())),
                        vmin=-0.5, vmax=len(states) - 0.5, interpolation="nearest")
        counts = d["status"].value_counts()
        ax_state.legend(handles=[Patch(color=c, label=f"{s} ({counts.get(s, 0)})") for s, c in STATE_COLOURS.items()],
                        loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
        ax_state.set_title(f"{name}: state of {len(d)} tiles")
        seconds = np.full(shape, np.nan)
        seconds[d["row"] - r0, d["col"] - c0] = d["seconds"].astype(float)
        image = ax_time.imshow(np.ma.masked_invalid(seconds), cmap="magma", interpolation="nearest")
        fig.colorbar(image, ax=ax_time, shrink=0.8, label="seconds per tile")
        ax_time.set_title(f"{name}: time per tile")
        for ax in (ax_state, ax_time):
            ax.set_xlabel("tile column")
            ax.set_ylabel("tile row")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not names:
        axes[0][0].text(0.5, 0.5, "no tiles in the status database", ha="center", va="center")
    fig.tight_layout()
    _save(fig, out_path)


def write_job_figures(frame: pd.DataFrame, out_path: str) -> None:
    """Per-tile seconds against each tile's estimated work, and the peak memory of the job that
    made each tile against the memory the job was granted (mem_mb)."""
    made = frame[frame["seconds"].notna()]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4), dpi=90)
    for name, d in made.groupby("dataset", sort=False):
        ax_time.scatter(d["work"].astype(float) / 1e6, d["seconds"], s=10, label=name)
        ax_mem.scatter(d["mem_mb"].astype(float), d["peak_rss_mb"].astype(float), s=10, label=name)
    ax_time.set_xlabel("estimated work (million source pixels)")
    ax_time.set_ylabel("seconds per tile")
    ax_time.set_title(f"{len(made)} tiles made")
    top = float(np.nanmax(made["mem_mb"].astype(float))) if len(made) and made["mem_mb"].notna().any() else 1.0
    ax_mem.plot([0, top * 1.1], [0, top * 1.1], color="#b00", linewidth=1, label="mem_mb (the job's limit)")
    ax_mem.set_xlim(0, top * 1.1)
    ax_mem.set_ylim(0, top * 1.1)
    ax_mem.set_xlabel("mem_mb granted to the job")
    ax_mem.set_ylabel("peak RSS of the job (MB)")
    ax_mem.set_title("memory: each tile's job against its grant")
    for ax in (ax_time, ax_mem):
        if len(made):
            ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out_path)


def write_config_page(config: dict, out_path: str) -> None:
    import yaml

    text = yaml.safe_dump(_without_secrets(config), sort_keys=False)
    with atomic_path(out_path) as tmp, open(tmp, "w") as f:
        f.write("<!doctype html><html><head><meta charset='utf-8'><title>Config</title></head><body>"
                f"<h1>The run's config</h1><pre>{html.escape(text)}</pre></body></html>")


def _without_secrets(config: dict) -> dict:
    """The config with the database URL's password removed."""
    out = json.loads(json.dumps(config, default=str))
    url = (out.get("database") or {}).get("url")
    if url:
        out["database"]["url"] = redact(url)
    return out


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _save(fig, out_path: str) -> None:
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")  # legends beside the axes stay in
    plt.close(fig)
