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
        mosaic="results/mosaics/{dataset}.tif",
        statistics="results/statistics/{dataset}.json",
    output:
        report(
            "results/report/quicklooks/{dataset}.png",
            caption="../report/quicklook.rst",
            category="Mosaics",
            labels={"dataset": "{dataset}"},
        ),
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
        statistics=expand("results/statistics/{dataset}.json", dataset=DATASETS),
    output:
        report("results/report/statistics.html", caption="../report/statistics.rst", category="Dataset statistics"),
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
        # After every mosaic: all tiles of the run are in the status database by then.
        mosaics=expand("results/mosaics/{dataset}.tif", dataset=DATASETS),
    output:
        tile_map=report("results/report/tiles.png", caption="../report/tiles.rst", category="Run"),
        figures=report("results/report/tile_figures.png", caption="../report/tile_figures.rst", category="Run"),
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
        report("results/report/config.html", caption="../report/config.rst", category="Run"),
    log:
        "logs/report/config.log",
    benchmark:
        "benchmarks/report/config.tsv"
    conda:
        "../envs/workflow.yaml"
    script:
        "../scripts/config_page.py"
