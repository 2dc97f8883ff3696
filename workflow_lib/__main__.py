"""The command line, ``onegrid`` (or ``python -m workflow_lib``): ``run|pause|resume|stop|logs`` steer
the run of this folder, ``plan`` shows what it will do, ``status`` and ``dashboard`` its progress,
``results`` what it produced."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

import rasterio


def facts(path: str) -> dict:
    """What a user wants to know of an output raster, for ``results`` (and its --json)."""
    with rasterio.open(path) as src:
        return {"path": path, "width": src.width, "height": src.height, "bands": list(src.descriptions),
                "dtype": src.dtypes[0], "resolution": list(src.res), "crs": src.crs.to_string(),
                "bytes": os.path.getsize(path)}


def describe(path: str) -> str:
    f = facts(path)
    names = ", ".join(d or "?" for d in f["bands"])
    return (f"{path}  {f['width']}x{f['height']} px, {len(f['bands'])} band(s) [{names}], {f['dtype']}, "
            f"{f['resolution'][0]:g} x {f['resolution'][1]:g} {f['crs']}, {_size(f['bytes'])}")


def _size(n: int) -> str:
    """1.2 MB, 38 kB: small files are not "0.0 MB"."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e5:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} kB" if n >= 1e3 else f"{n} B"


DEFAULT_CONFIG = "config/config.yaml"


def results(results_dir: str, as_json: bool = False, config_path: str = DEFAULT_CONFIG) -> int:
    import json
    from dataclasses import asdict

    from workflow_lib.domain import table_dir, zarr_store_path
    from workflow_lib.mosaics.table import table_facts
    from workflow_lib.mosaics.zarr_store import store_facts

    mosaics_dir = os.path.join(results_dir, "mosaics")
    # GeoTIFF mosaics, or VRTs over the tiles (output.formats: [zarr]).
    mosaics = sorted(f for f in os.listdir(mosaics_dir) if f.endswith((".tif", ".vrt"))) \
        if os.path.isdir(mosaics_dir) else []
    stack = os.path.join(results_dir, "stack.tif")
    store = store_facts(zarr_store_path(results_dir))
    table = table_facts(table_dir(results_dir))
    if not mosaics and not os.path.exists(stack) and not store and not table:
        print(f"no results under {results_dir}/ yet: run snakemake first", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"mosaics": [facts(os.path.join(mosaics_dir, name)) for name in mosaics],
                          "stack": facts(stack) if os.path.exists(stack) else None, "zarr": store,
                          "table": table,
                          "statistics": [asdict(s) for s in dataset_statistics(config_path)]}, indent=1))
        return 0
    if mosaics:
        print("Mosaics:")
    for name in mosaics:
        print("  " + describe(os.path.join(mosaics_dir, name)))
    if os.path.exists(stack):
        print("Stack:")
        print("  " + describe(stack))
    if store:
        arrays = store["arrays"]
        shape = "x".join(str(n) for n in reversed(arrays[0]["shape"][-2:])) if arrays else "-"
        chunks = "x".join(str(n) for n in reversed(arrays[0]["chunks"][-2:])) if arrays else "-"
        sharded = sum(bool(a["shards"]) for a in arrays)
        if sharded:
            chunks += f" ({sharded} array(s) sharded: a file per batch)"
        print(f"Zarr (xarray.open_zarr({store['path']!r}), with rioxarray for the CRS):")
        levels = f", overview levels 1/{', 1/'.join(map(str, store['overviews']))}" if store["overviews"] else ""
        print(f"  {store['path']}  {len(arrays)} array(s) [{', '.join(a['name'] for a in arrays)}], {shape} px, "
              f"chunks {chunks}{levels}, {_size(store['bytes'])}")
    if table:
        print(f"Table (pandas.read_parquet({table['path']!r}), one row per valid cell):")
        print(f"  {table['path']}  {table['rows']:,} rows x {len(table['columns'])} columns "
              f"[{', '.join(table['columns'])}], {table['files']} file(s), {_size(table['bytes'])}")
    statistics = dataset_statistics(config_path)
    if statistics:
        print("Statistics (status database):")
        width = max(len(s.name) for s in statistics)
        print(f"  {'dataset':<{width}}  {'valid':>7}  {'min':>10}  {'max':>10}  {'mean':>10}  {'std':>10}")
        for s in statistics:
            share = f"{100 * s.valid_pixels / s.total_pixels:6.1f}%" if s.total_pixels else "      -"
            print(f"  {s.name:<{width}}  {share}  {_figure(s.min)}  {_figure(s.max)}  {_figure(s.mean)}  "
                  f"{_figure(s.std)}")
    return 0


def dataset_statistics(config_path: str = DEFAULT_CONFIG) -> list:
    """Each dataset's statistics as its mosaic job recorded them; none if there is no database."""
    from workflow_lib.status import StatusStore, resolve_url

    store = StatusStore(resolve_url(_config_database_url(config_path)), read_only=True)
    try:
        return store.dataset_statistics()
    except store.backend.unreachable:
        return []
    finally:
        store.close()


def _figure(value) -> str:
    return f"{'-':>10}" if value is None else f"{value:10.6g}"


def status(url: str | None, as_json: bool, watch: float | None, config_path: str = DEFAULT_CONFIG) -> int:
    import time

    from workflow_lib.status import StatusStore, redact, resolve_url
    from workflow_lib.status.run import record_interrupted
    from workflow_lib.status.store import sqlite_path
    from workflow_lib.views.status import build_report, render, to_json

    target = url or resolve_url(_config_database_url(config_path))
    path = sqlite_path(target)
    store = None
    try:
        while True:
            if path is not None and not os.path.exists(path):
                # A reader creates nothing: no database (nor folder) until a run makes one.
                if not watch:
                    print(f"Error: no run recorded yet: there is no status database at {path}", file=sys.stderr)
                    return 1
                text = f"no run recorded yet: there is no status database at {path}"
            else:
                store = store or StatusStore(target)
                try:
                    store.query("SELECT 1")  # reachable? Asked first: a reader has no events to spool
                except store.backend.unreachable as exc:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    if not watch:
                        print(f"Error: cannot read the status database {redact(target)}: {reason}", file=sys.stderr)
                        return 1
                    text = f"cannot read the status database {redact(target)} ({reason}); trying again"
                else:
                    store.replay()
                    record_interrupted(store)
                    report = build_report(store, controller=_controller_state(),
                                          workdir=None if url else os.getcwd())
                    text = to_json(report) if as_json else render(report)
            if watch:
                print("\033[2J\033[H" + text, flush=True)  # clear the screen, then redraw
                time.sleep(watch)
                continue
            print(text, flush=True)  # a closed pipe (`status | head`) fails here, where main() says nothing of it
            return 0
    finally:
        if store is not None:
            store.close()


def show_plan(config_path: str, as_json: bool) -> int:
    import json

    from workflow_lib.config import load_config
    from workflow_lib.errors import WorkflowLibError
    from workflow_lib.planning.plan import load_plan
    from workflow_lib.views.plan import plan_rows, render_plan

    try:
        plan = load_plan(load_config(config_path))
    except (OSError, WorkflowLibError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    rows = plan_rows(plan)
    print(json.dumps(rows, indent=1) if as_json else render_plan(plan, rows))
    return 0


def dashboard(url: str | None, host: str, port: int, refresh: float, config_path: str = DEFAULT_CONFIG) -> int:
    from workflow_lib.status import resolve_url
    from workflow_lib.views.dashboard import serve

    try:
        return serve(url or resolve_url(_config_database_url(config_path)), host, port, refresh,
                     controller=_controller_state,
                     workdir=None if url else os.getcwd())
    except OSError as exc:
        print(f"Error: cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _config_database_url(config_path: str = DEFAULT_CONFIG) -> str | None:
    from workflow_lib.config import read_yaml

    if not os.path.exists(config_path):
        if config_path != DEFAULT_CONFIG:
            from workflow_lib.errors import ConfigError

            raise ConfigError(f"--config {config_path}: no such file")
        return None
    return (read_yaml(config_path).get("database") or {}).get("url")


def _controller_state() -> dict | None:
    """The state of the controller's run in this folder, if one is alive."""
    from workflow_lib.controller.runfile import read_run

    info = read_run()
    if info is None or not info.alive():
        return None
    return {"state": info.state, "since": info.state_since, "run_id": info.run_id, "pid": info.pid}


# Shown at the end of each verb's --help.
EXAMPLES = {
    "results": ["onegrid results", "onegrid results --json > results.json"],
    "plan": ["onegrid plan", "onegrid plan --config config/mine.yaml --json"],
    "status": ["onegrid status", "onegrid status --watch 5", "onegrid status --db postgresql://user@host/runs"],
    "dashboard": ["onegrid dashboard        # then open http://127.0.0.1:8765/", "onegrid dashboard --port 0"],
    "run": ["onegrid run -- --cores 4 --resources mem_mb=8000",
            "onegrid run --detach --config config/mine.yaml -- --cores all"],
    "pause": ["onegrid pause", "onegrid pause --freeze"],
    "resume": ["onegrid resume", "onegrid resume --detach"],
    "stop": ["onegrid stop"],
    "logs": ["onegrid logs", "onegrid logs --follow"],
}


def main(argv: list[str] | None = None) -> int:
    from importlib.metadata import PackageNotFoundError, version

    parser = argparse.ArgumentParser(prog="onegrid",
                                     description="Steer and watch the tiled resampling workflow of this folder: "
                                     "many rasters onto one grid, tile by tile (Snakemake underneath).")
    try:
        release = version("onegrid")
    except PackageNotFoundError:
        release = "unknown (not installed)"
    try:
        snakemake_release = version("snakemake")
    except PackageNotFoundError:
        snakemake_release = "not installed"
    parser.add_argument("--version", action="version", version=f"%(prog)s {release} (Snakemake "
                        f"{snakemake_release}, rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__})")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("results", help="list the mosaics and the stack of a run",
                          description="The mosaics and the stack of a run, with each dataset's statistics.")
    show.add_argument("results_dir", nargs="?", default="results", metavar="FOLDER",
                      help="the run's output folder (default: %(default)s)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    pl = sub.add_parser("plan", help="tiles, batches and tiles on disk per dataset, without running anything")
    pl.add_argument("--config", default="config/config.yaml", help="the workflow's config (default: %(default)s)")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    st = sub.add_parser("status", help="progress of the run from the status database")
    st.add_argument("--db", help="database URL (default: WORKFLOW_STATUS_DB, config database.url, or "
                                 "sqlite:///results/status.sqlite)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                    help="redraw every SECONDS (default 2) until interrupted")
    db = sub.add_parser("dashboard", help="a live page of the run in the browser (reads the status database only)")
    db.add_argument("--db", help="database URL (default as for status)")
    db.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: %(default)s, this machine only; another is your choice)")
    db.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0 picks a free one)")
    db.add_argument("--refresh", type=float, default=3.0, metavar="SECONDS",
                    help="how often the page refreshes (default: %(default)s)")
    run = sub.add_parser("run", help="start Snakemake (its own process group, console to logs/run/console.log); "
                                     "arguments after -- go to Snakemake")
    run.add_argument("--detach", action="store_true", help="start in the background and return")
    run.add_argument("--config", metavar="FILE",
                     help="your config instead of config/config.yaml (Snakemake's --configfile)")
    run.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="-- then Snakemake's arguments")
    pa = sub.add_parser("pause", help="running jobs finish, no new job starts, Snakemake exits (SIGTERM)")
    pa.add_argument("--freeze", action="store_true", help="freeze the whole run in place (SIGSTOP) until resume")
    pa.add_argument("--wait", action="store_true", help="return only when Snakemake has exited")
    re = sub.add_parser("resume", help="let a frozen run go on, or start a paused or stopped one again")
    how = re.add_mutually_exclusive_group()
    how.add_argument("--detach", action="store_true", default=None, help="start it in the background")
    how.add_argument("--foreground", dest="detach", action="store_false",
                     help="start it in this terminal (by default: as the run was started)")
    sub.add_parser("stop", help="stop now: running jobs are cancelled, their temporary files removed")
    lg = sub.add_parser("logs", help="the run's console log")
    lg.add_argument("-f", "--follow", action="store_true", help="follow it until the run ends")
    for verb in (show, st, db):  # the config they read the database's URL from; plan's reads all of it
        verb.add_argument("--config", default=DEFAULT_CONFIG,
                          help="the workflow's config, for its database.url (default: %(default)s)")
    for action in sub._choices_actions:  # each verb's --help starts with what the list says of it
        verb = sub.choices[action.dest]
        verb.description = textwrap.fill(verb.description or action.help[:1].upper() + action.help[1:] + ".", 79)
        verb.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[action.dest])
        verb.formatter_class = argparse.RawDescriptionHelpFormatter
    args = parser.parse_args(argv)
    if args.command in ("run", "pause", "resume", "stop", "logs"):
        from workflow_lib import controller

        try:
            if args.command == "run":
                extra = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
                if args.config:
                    extra = ["--configfile", args.config, *extra]
                return controller.start(extra, args.detach)
            if args.command == "pause":
                return controller.pause(args.freeze, args.wait)
            if args.command == "resume":
                return controller.resume(args.detach)
            if args.command == "stop":
                return controller.stop()
            return controller.logs(args.follow)
        except controller.ControlError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    from workflow_lib.errors import WorkflowLibError

    try:
        if args.command == "dashboard":
            return dashboard(args.db, args.host, args.port, args.refresh, args.config)
        if args.command == "plan":
            return show_plan(args.config, args.json)
        if args.command == "results":
            return results(args.results_dir, args.json, args.config)
        if args.command == "status":
            return status(args.db, args.json, args.watch, args.config)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # `status | head`: the reader has what it wanted. Python would complain again when it
        # flushes stdout at exit: point stdout at nothing first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except WorkflowLibError as exc:  # a config mistake (a YAML error, a bad database URL): one line
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
