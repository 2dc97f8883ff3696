# The report's pictures and tables (`snakemake --report report.html`): cheap, made by the default
# target after the mosaics. Captions are in report/. On a cluster they run where Snakemake runs
# (a queue wait would cost more than they do).
localrules:
    quicklook,
    statistics_page,
    tile_figures,
    config_page,


rule quicklook:
    input:
        # The mosaic (served from its overviews), or the Zarr store when no mosaic is made.
        raster=lambda w: mosaic_path(w.dataset) if OutputFormat.COG in PLAN.formats else zarr_root_path(),
        statistics=statistics_path("{dataset}"),
    output:
        report(
            quicklook_path("{dataset}"),
            caption="../report/quicklook.rst",
            category="Mosaics",
            labels={"dataset": "{dataset}"},
        ),
    params:
        # What to read: the mosaic, or the dataset's array in the store.
        source=lambda w: mosaic_path(w.dataset) if OutputFormat.COG in PLAN.formats
        else os.path.join(zarr_store_path(), w.dataset),
    log:
        "logs/quicklook/{dataset}.log",
    benchmark:
        "benchmarks/quicklook/{dataset}.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 512 * attempt,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/quicklook.py"


rule statistics_page:
    input:
        statistics=expand(statistics_path("{dataset}"), dataset=DATASETS),
    output:
        report(report_page("statistics.html"), caption="../report/statistics.rst", category="Dataset statistics"),
    log:
        "logs/report/statistics.log",
    benchmark:
        "benchmarks/report/statistics.tsv"
    resources:
        mem_mb=lambda wildcards, attempt: 512 * attempt,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/statistics_page.py"


rule tile_figures:
    input:
        # After every mosaic (or the Zarr store, without mosaics): all tiles of the run are in the
        # status database by then.
        after=expand(mosaic_path("{dataset}"), dataset=DATASETS) if OutputFormat.COG in PLAN.formats
        else zarr_root_path(),
    output:
        tile_map=report(report_page("tiles.png"), caption="../report/tiles.rst", category="Run"),
        figures=report(report_page("tile_figures.png"), caption="../report/tile_figures.rst", category="Run"),
    log:
        "logs/report/tile_figures.log",
    benchmark:
        "benchmarks/report/tile_figures.tsv"
    params:
        datasets=DATASETS,
    resources:
        mem_mb=lambda wildcards, attempt: 1024 * attempt,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/tile_figures.py"


rule config_page:
    output:
        report(report_page("config.html"), caption="../report/config.rst", category="Run"),
    log:
        "logs/report/config.log",
    benchmark:
        "benchmarks/report/config.tsv"
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/config_page.py"
