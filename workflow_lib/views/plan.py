"""``onegrid plan``: what a run will do, per dataset, without running anything.

From the config and the input headers only (the same cached plan the Snakefile uses), and what is
on disk: tiles, batches (jobs), tiles already made, and the source pixels the tiles will read.
"""

from __future__ import annotations

import os

from workflow_lib.domain import RESULTS_DIR, tile_dir, tile_file_name
from workflow_lib.planning.plan import Plan


def plan_rows(plan: Plan, results_dir: str = RESULTS_DIR) -> list[dict]:
    rows = []
    for name, d in plan.datasets.items():
        folder = tile_dir(name, results_dir)
        on_disk = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        sizes = [len(b.tiles) for b in d.batches]
        rows.append({
            "dataset": name, "method": d.settings.method.value, "engine": d.settings.engine.label,
            "engine_reason": d.settings.engine_reason, "note": d.note or None,
            "tiles": d.tile_count, "batches": len(d.batches),
            "tiles_per_batch": [min(sizes), max(sizes)],
            "tiles_on_disk": sum(tile_file_name(t) in on_disk for t in d.tile_ids),
            "source_pixels": plan.estimated_work(name),
        })
    return rows


def render_plan(plan: Plan, rows: list[dict]) -> str:
    g = plan.grid
    # Width before height, columns before rows, as everywhere else the workflow prints sizes.
    lines = [f"target grid: {g.width} x {g.height} px (width x height) in {g.crs.to_string()}, pixel "
             f"{g.resolution[0]:g} x {g.resolution[1]:g}; tiles of {g.tile_size} px: {g.tile_cols} x {g.tile_rows} "
             "(columns x rows)",
             "",
             f"{'dataset':<14} {'method':<9} {'engine':<13} {'tiles':>8} {'batches':>8} {'per batch':>10} "
             f"{'on disk':>8} {'source px':>10}"]
    for r in rows:
        low, high = r["tiles_per_batch"]
        per = f"{low}" if low == high else f"{low}-{high}"
        lines.append(f"{r['dataset']:<14} {r['method']:<9} {r['engine']:<13} {r['tiles']:>8} {r['batches']:>8} "
                     f"{per:>10} {r['tiles_on_disk']:>8} {_count(r['source_pixels']):>10}")
    total = sum(r["tiles"] for r in rows)
    lines.append(f"{'all':<14} {'':<9} {'':<13} {total:>8} {sum(r['batches'] for r in rows):>8} {'':>10} "
                 f"{sum(r['tiles_on_disk'] for r in rows):>8} {_count(sum(r['source_pixels'] for r in rows)):>10}")
    lines.append("")
    lines.extend(f"engine of {r['dataset']}: {r['engine']} ({r['engine_reason']})" for r in rows if r["engine_reason"])
    lines.extend(f"note: dataset {r['dataset']}: {r['note']}" for r in rows if r["note"])
    lines.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(lines)


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"
