# The run's summary, made once every product is there, by one local job (a Python process costs
# about a second to start; one per picture would cost more than the pictures): a quicklook of every
# dataset, the report's pages (`snakemake --report report.html`; captions in report/), and the STAC
# catalog results/stac/ (workflow_lib.mosaics.stac), which hashes the products and the quicklooks
# but decodes no pixel. On a cluster it runs where Snakemake runs (a queue wait would cost more).
localrules:
    summary,


rule summary:
    input:
        records=expand(dataset_record_path("{dataset}"), dataset=DATASETS),
        statistics=expand(statistics_path("{dataset}"), dataset=DATASETS),
        # The mosaics (quicklooks come from their overviews), the Zarr store, the table. All tiles
        # of the run are in the status database by then, for the tile figures.
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
        tile_map=report(report_page("tiles.png"), caption="../report/tiles.rst", category="Run"),
        figures=report(report_page("tile_figures.png"), caption="../report/tile_figures.rst", category="Run"),
        config=report(report_page("config.html"), caption="../report/config.rst", category="Run"),
        stac=stac_collection_path(),
    log:
        "logs/summary/summary.log",
    benchmark:
        "benchmarks/summary/summary.tsv"
    params:
        datasets=DATASETS,
        # What each quicklook reads: the mosaic, or the dataset's array in the store.
        sources=[quicklook_source(name) for name in DATASETS],
        formats=[f.value for f in PLAN.formats],
        workflow_dir=workflow.basedir,
    resources:
        # A quicklook (at most 800 px a side, from overviews or a decimated read) and the tile frame.
        mem_mb=lambda wildcards, attempt: 1024 * attempt,
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/summary.py"
