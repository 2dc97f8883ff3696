# The report's pages (`snakemake --report report.html`; captions in report/) and the STAC catalog,
# by two local jobs (a Python process costs about a second to start; one per picture would cost
# more than the pictures). On a cluster they run where Snakemake runs (a queue wait would cost more).
# - run_figures: the map of tiles, the per-tile figures and the config, once every batch is done,
#   beside the mosaics and the Zarr store rather than after them.
# - summary: a quicklook of every dataset, the statistics page, and the STAC catalog results/stac/
#   (workflow_lib.mosaics.stac), which hashes the products and the quicklooks but decodes no pixel,
#   once every product is there.
localrules:
    run_figures,
    summary,


rule run_figures:
    input:
        # All tiles of the run are in the status database once their batches are done (each batch
        # follows its dataset's record).
        batches=[batch_manifests(name) for name in DATASETS],
    output:
        tile_map=report(report_page("tiles.png"), caption="../report/tiles.rst", category="Run"),
        figures=report(report_page("tile_figures.png"), caption="../report/tile_figures.rst", category="Run"),
        config=report(report_page("config.html"), caption="../report/config.rst", category="Run"),
    log:
        "logs/run_figures/run_figures.log",
    benchmark:
        "benchmarks/run_figures/run_figures.tsv"
    params:
        datasets=DATASETS,
    resources:
        # A frame of every tile's row (about 200 bytes a tile).
        mem_mb=lambda wildcards, attempt: 1024 * attempt,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/run_figures.py"


rule summary:
    input:
        records=expand(dataset_record_path("{dataset}"), dataset=DATASETS),
        statistics=expand(statistics_path("{dataset}"), dataset=DATASETS),
        # The mosaics (quicklooks come from their overviews), the Zarr store, the table.
        products=format_products(),
    output:
        quicklooks=[
            report(
                quicklook_path(name),
                caption="../report/quicklook.rst",
                category="Mosaics",
                labels={"dataset": name},
            )
            for name in DATASETS
        ],
        statistics=report(report_page("statistics.html"), caption="../report/statistics.rst",
                          category="Dataset statistics"),
        stac=stac_collection_path(),
    log:
        "logs/summary/summary.log",
    benchmark:
        "benchmarks/summary/summary.tsv"
    params:
        # What each quicklook reads: the mosaic, or the dataset's array in the store.
        sources=[quicklook_source(name) for name in DATASETS],
        formats=[f.value for f in PLAN.formats],
        workflow_dir=workflow.basedir,
    resources:
        # A quicklook (at most 800 px a side, from overviews or a decimated read).
        mem_mb=lambda wildcards, attempt: 1024 * attempt,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/summary.py"
