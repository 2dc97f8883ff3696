# Quick start: `make run` (set up, then run the workflow on the bundled example) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= all
MEM_MB ?= 4096
BIN    := $(VENV)/bin

.PHONY: install install-test install-slurm run example status dashboard report test test-quick dryrun dag lint bench docs clean

# What running the workflow needs. The tests need more (the SLURM executor plugin, moto, shapely,
# xarray): `make test` adds them. Not here, because every `snakemake` command imports every
# executor plugin installed (the SLURM one imports pandas: 0.5 s), and rasterio imports boto3
# (moto's) in every job when it is installed (0.1-0.2 s). On a cluster: `make install-slurm`.
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-slurm: $(VENV)/.installed-slurm

# Re-install whenever the pins change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	# compat mode: the repository on sys.path, where Snakemake looks for its logger plugin
	$(BIN)/python -m pip install --quiet -e . --config-settings editable_mode=compat
	touch $@

$(VENV)/.installed-%: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[$*]" --config-settings editable_mode=compat
	touch $@

example: install
	$(BIN)/python scripts/make_example_data.py data/example

run: example
	$(BIN)/snakemake --cores $(CORES) --resources mem_mb=$(MEM_MB)
	$(BIN)/onegrid results
	$(BIN)/onegrid status

status: install
	$(BIN)/onegrid status

# A live page of the run on http://127.0.0.1:8765/ (Ctrl-C stops it).
dashboard: install
	$(BIN)/onegrid dashboard

# The report of the last run: quicklooks, tile map, per-tile figures, statistics, config.
report: install
	$(BIN)/snakemake --report report.html

dryrun: example
	$(BIN)/snakemake -n --quiet rules

dag: example
	$(BIN)/snakemake --rulegraph | dot -Tsvg > rulegraph.svg

lint: install
	$(BIN)/snakemake --lint

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that neither start Snakemake (marked integration) nor compare whole rasters with
# slow references (marked slow): a first check in a few minutes. `make test` runs them all.
test-quick: install-test
	$(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

# Not part of the tests: about 30 minutes on 2 cores, plus 8 to generate its inputs once; needs Debian's gdal-bin and vmtouch (bench/README.md).
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/makespan.py --size 40000

clean:
	rm -rf results logs benchmarks .cache report.html

# The table of every config key in docs/configuration.md, from the schema (tests/test_docs.py
# fails when it is stale).
docs: install
	$(BIN)/python -m workflow_lib.schema_docs docs/configuration.md
