"""How a run scales with cores: a makespan model from a measured run, checked against measured runs.

    .venv/bin/python bench/makespan.py                       # the first case at 10,000^2, measured at 1 and 2 cores
    .venv/bin/python bench/makespan.py --size 40000          # the benchmark's first case (inputs from make bench)

Runs the workflow on the first benchmark case (float32, average x4, bench/run.py) at each of
``--cores``, then models the run from its jobs: each job's rule, inputs and outputs, start and end
(Snakemake's metadata, .snakemake/metadata), its CPU time (the last line of its log), its
declared threads and priority (a dry run). The model:

- A job's time on t threads follows Amdahl's law, its parallel share found from its measured
  wall time and CPU time at the threads it had. A batch job is split into its fixed start (before
  its first tile, after its last: from its log) and its tiles' work, so that the batches a plan
  would make on N cores (planning.batches, sized for the machine) can be priced: a batch of k of the
  measured batch's T tiles costs the fixed start plus k/T of the tiles' work.
- Jobs run as soon as their inputs exist and enough cores are free, highest priority first, then
  longest first (Snakemake's scheduler, without its ILP's look-ahead), each on min(threads, N).
- Snakemake's own start and end (parsing, the DAG, the exit; measured: the run's wall time minus
  its jobs' span) are serial, with one core busy.

It predicts every measured run from the run with the most cores (the others check the model:
within 10 % is the target) and prints, for 1 to 64 cores, the predicted wall time, the speed-up
over 1 core, and the share of core-time idle (fewer busy threads than cores). Memory bandwidth,
decode threads and file-system contention are not modelled: see bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run as bench  # noqa: E402  (bench/run.py: the cases, the inputs, one workflow run)

from workflow_lib.domain import TileIndex  # noqa: E402
from workflow_lib.planning.batches import make_batches, tiles_per_batch  # noqa: E402

CORES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Job:
    key: str  # its log file: unique per job
    rule: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    wall: float  # measured, s
    cpu: float  # measured CPU time, s
    threads: int  # declared
    priority: int
    fixed: float = 0.0  # batch jobs: the serial start and end around the tiles
    tiles: int = 0  # batch jobs: tiles made


def measured_jobs(workdir: str) -> tuple[list[Job], float]:
    """The jobs of the run in ``workdir`` and the span from the first job's start to the last one's end."""
    by_hash: dict = {}
    meta_dir = os.path.join(workdir, ".snakemake", "metadata")
    for name in os.listdir(meta_dir):
        with open(os.path.join(meta_dir, name)) as f:
            record = json.load(f)
        output = base64.b64decode(name.replace("@", "/")).decode()
        entry = by_hash.setdefault(record["job_hash"], {"record": record, "outputs": []})
        entry["outputs"].append(output)
    declared = declared_threads(workdir)
    # A batch job shows its message instead in a dry run: its threads are the config's.
    undeclared = (batch_threads(workdir), 0)
    jobs = []
    for entry in by_hash.values():
        record = entry["record"]
        log = record["log"][0]
        tsv = os.path.join(workdir, log.replace("logs/", "benchmarks/", 1)[:-len(".log")] + ".tsv")
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        threads, priority = declared.get(log, undeclared)
        job = Job(log, record["rule"], tuple(record["input"]), tuple(entry["outputs"]),
                  record["endtime"] - record["starttime"], job_cpu(os.path.join(workdir, log), row), threads, priority)
        if job.rule == "resample_batch":
            fixed, tiles = bench.batch_fixed_cost(os.path.join(workdir, log), job.wall)
            job = replace(job, fixed=fixed, tiles=tiles)
        jobs.append(job)
    records = [entry["record"] for entry in by_hash.values()]
    span = max(r["endtime"] for r in records) - min(r["starttime"] for r in records)
    return jobs, span


def declared_threads(workdir: str) -> dict[str, tuple[int, int]]:
    """Each job's declared threads and priority, keyed by its log: from a dry run of every job."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", os.path.join(bench.REPO, "Snakefile"),
                          "--directory", workdir, "-n", "--forceall", "--cores", "1024"],
                         capture_output=True, text=True, check=True).stdout
    found = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        log = re.search(r"^\s+log: (\S+)", block, re.M)
        if log:
            threads = re.search(r"^\s+threads: (\d+)", block, re.M)
            priority = re.search(r"^\s+priority: (-?\d+)", block, re.M)
            found[log.group(1).rstrip(",")] = (int(threads.group(1)) if threads else 1,
                                               int(priority.group(1)) if priority else 0)
    return found


def job_cpu(log: str, benchmark: dict) -> float:
    """A job's CPU seconds, from the last line its log has (runtime.job_logging); Snakemake's
    benchmark polls it every few seconds and misses the end of a job (about half of a 20 s one)."""
    with open(log) as f:
        found = re.findall(r"peak RSS \d+ MB, CPU ([\d.]+) s", f.read())
    return float(found[-1]) if found else float(benchmark["cpu_time"])


def batch_threads(workdir: str) -> int:
    from workflow_lib.config import validate_config

    import yaml

    with open(os.path.join(workdir, "config", "config.yaml")) as f:
        return validate_config(yaml.safe_load(f))["threads_per_job"]


def parallel_share(wall: float, cpu: float, threads: int) -> float:
    """Amdahl's parallel share p from a wall time at ``threads`` threads and its CPU time."""
    if threads <= 1:
        return 0.0
    speedup = min(max(cpu / wall, 1.0), float(threads))
    return (1 - 1 / speedup) / (1 - 1 / threads)


def on_threads(single: float, p: float, threads: int) -> float:
    return single * ((1 - p) + p / threads)


@dataclass
class Model:
    """The jobs of the base run, each as (single-thread seconds, parallel share), for any core count."""
    jobs: list[Job]
    base_cores: int
    overhead: float  # Snakemake's start and end
    plan: PlanFacts | None  # the dataset's tiles, for re-cutting its batches

    def tasks(self, cores: int) -> list[tuple[str, int, int, float, set[str], set[str]]]:
        """(key, priority, threads, seconds, inputs, outputs) of every job on ``cores`` cores, the
        batches re-cut as the plan would on a machine of that many cores."""
        out = []
        rebatched = self.rebatch(cores)
        for job in self.jobs:
            had = min(job.threads, self.base_cores)
            threads = min(job.threads, cores)
            if job.rule == "resample_batch":
                tiles_wall = job.wall - job.fixed
                p = parallel_share(tiles_wall, max(job.cpu - job.fixed, tiles_wall), had)
                work = tiles_wall / ((1 - p) + p / had)  # the tiles' work on one thread
                for i, k in enumerate(rebatched.get(job.key, [job.tiles])):
                    seconds = job.fixed + on_threads(work * k / max(job.tiles, 1), p, min(threads, k))
                    outputs = set(job.outputs) if i == 0 else {f"{job.key}#{i}"}
                    out.append((f"{job.key}#{i}", job.priority, threads, seconds, set(job.inputs), outputs))
            else:
                p = parallel_share(job.wall, job.cpu, had)
                single = job.wall / ((1 - p) + p / had)
                out.append((job.key, job.priority, threads, on_threads(single, p, threads),
                            set(job.inputs), set(job.outputs)))
        # A job that read a measured batch's manifest now waits for every batch cut from it.
        parts = {}
        for key, *_, outputs in out:
            base = key.split("#")[0]
            parts.setdefault(base, set()).update(outputs)
        batch_outputs = {o: parts[j.key] for j in self.jobs if j.rule == "resample_batch" for o in j.outputs}
        return [(key, prio, thr, sec, set().union(*(batch_outputs.get(i, {i}) for i in ins)) if ins else set(), outs)
                for key, prio, thr, sec, ins, outs in out]

    def rebatch(self, cores: int) -> dict[str, list[int]]:
        """Tiles per batch job of each measured batch job, as the plan would cut its dataset on a
        machine of ``cores`` cores (only datasets measured as one batch are re-cut)."""
        batches = [j for j in self.jobs if j.rule == "resample_batch"]
        if len(batches) != 1 or self.plan is None:
            return {}
        job, plan = batches[0], self.plan
        per = tiles_per_batch(plan.tile_work, len(plan.tiles), len(plan.tiles), max(1, cores // job.threads))
        return {job.key: [len(b.tiles) for b in make_batches(plan.tiles, plan.tile_rows, plan.tile_cols, per)]}

    def predict(self, cores: int) -> tuple[float, float]:
        """Predicted wall time on ``cores`` cores and the share of core-time idle."""
        tasks = self.tasks(cores)
        made = {o for t in tasks for o in t[5]}
        done: set[str] = set()
        running: list[tuple[float, int, set[str]]] = []  # (end, threads, outputs)
        waiting = sorted(tasks, key=lambda t: (-t[1], -t[3]))
        now, free, busy_core_seconds = 0.0, cores, 0.0
        while waiting or running:
            started = True
            while started:
                started = False
                for task in waiting:
                    key, prio, threads, seconds, inputs, outputs = task
                    if threads <= free and all(i in done or i not in made for i in inputs):
                        running.append((now + seconds, threads, outputs))
                        busy_core_seconds += threads * seconds
                        free -= threads
                        waiting.remove(task)
                        started = True
                        break
            if not running:
                raise RuntimeError("the model's DAG cannot progress (a job waits on an output nothing makes)")
            running.sort(key=lambda r: r[0])
            end, threads, outputs = running.pop(0)
            now, free = end, free + threads
            done |= outputs
        wall = now + self.overhead
        idle = 1 - (busy_core_seconds + self.overhead) / (wall * cores)
        return wall, idle


@dataclass(frozen=True)
class PlanFacts:
    """What re-cutting a dataset's batches needs: its tiles and the estimated work of one."""
    tile_work: float
    tiles: list[TileIndex]
    tile_rows: int
    tile_cols: int


def plan_facts(workdir: str) -> PlanFacts:
    """The run's plan (one dataset), from the plan's cache in ``workdir``."""
    from workflow_lib.config import validate_config
    from workflow_lib.planning.plan import load_plan, tile_work

    import yaml

    here = os.getcwd()
    os.chdir(workdir)
    try:
        with open(os.path.join("config", "config.yaml")) as f:
            plan = load_plan(validate_config(yaml.safe_load(f)))
    finally:
        os.chdir(here)
    [dataset] = plan.datasets.values()
    tiles = list(dataset.tiles)
    return PlanFacts(tile_work(plan.grid, dataset.header, dataset.settings, len(tiles)), tiles,
                     plan.grid.tile_rows, plan.grid.tile_cols)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10000, help="edge of the input in pixels")
    parser.add_argument("--cores", default="1,2", help="snakemake --cores of the measured runs")
    parser.add_argument("--workdir", default=os.path.join(bench.REPO, "bench", "work"))
    args = parser.parse_args()
    measured_cores = sorted(int(c) for c in args.cores.split(","))
    n = args.size
    os.makedirs(args.workdir, exist_ok=True)
    # bench/run.py's first case: float32 in EPSG:3035 at 10 m, averaged onto 40 m.
    case = bench.Case(f"float32 {n}x{n}, average, factor 4", os.path.join(args.workdir, f"float32_{n}.tif"),
                      "float32", n, "average", "EPSG:3035", 40)
    bench.generate(case.input, n, "float32", "EPSG:3035", bench.Affine(10, 0, 4_000_000, 0, -10, 3_000_000))
    print(f"machine: {os.cpu_count()} CPUs; Snakemake runs of the first case at --cores {args.cores}", flush=True)
    runs = {}
    for cores in measured_cores:
        workdir = os.path.join(args.workdir, f"makespan-{cores}")
        with bench.PageCacheLock(case.input):
            result = bench.run_workflow(case, workdir, None, cores=cores)
        jobs, span = measured_jobs(workdir)
        runs[cores] = (result["seconds"], jobs, span, workdir)
        print(f"measured --cores {cores}: {result['seconds']:.1f} s wall, {len(jobs)} jobs, "
              f"jobs' span {span:.1f} s, Snakemake's start and end {result['seconds'] - span:.1f} s", flush=True)
    base = measured_cores[-1]
    wall, jobs, span, workdir = runs[base]
    model = Model(jobs, base, wall - span, plan_facts(workdir))
    print(f"\n## {case.name}: model from the run on {base} core(s)\n")
    print("| cores | measured | predicted | error |\n|---|---|---|---|")
    for cores in measured_cores:
        predicted, _ = model.predict(cores)
        error = 100 * (predicted / runs[cores][0] - 1)
        print(f"| {cores} | {runs[cores][0]:.1f} s | {predicted:.1f} s | {error:+.0f} % |")
    print("\n| cores | predicted wall | speed-up over 1 core | idle core-time | batch jobs |\n|---|---|---|---|---|")
    one, _ = model.predict(1)
    for cores in CORES:
        predicted, idle = model.predict(cores)
        n_batches = sum(1 for t in model.tasks(cores) if t[0].startswith("logs/resample_batch/"))
        print(f"| {cores} | {predicted:.1f} s | {one / predicted:.2f}x | {100 * idle:.0f} % | {n_batches} |")


if __name__ == "__main__":
    main()
