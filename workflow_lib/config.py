"""Loading and checking the workflow's configuration.

The JSON Schema (``schemas/config.schema.yaml``) checks shapes and fills defaults; the checks here
need GDAL or the file system (a CRS that parses, files that exist) and run before any job.
"""

from __future__ import annotations

import difflib
import math
from importlib import resources
from typing import Any

import yaml
from rasterio.errors import CRSError

from workflow_lib import secrets
from workflow_lib.domain import ZARR_BAND_SUFFIX, ZARR_COORDINATES, ZARR_OVERVIEWS, OutputFormat
from workflow_lib.errors import ConfigError
from workflow_lib.coords import parse_crs
from workflow_lib.runtime import BASELINE_MB, MIN_JOB_MB, MIN_TILE_SHARE_MB
from workflow_lib.sources.paths import check_path

# A dataset's name is part of file names (its tiles' folder, its mosaic, .tmp- files beside them):
# file systems allow 255 bytes per name.
MAX_NAME_LENGTH = 100
SCHEMA_PATH = str(resources.files("workflow_lib") / "schemas" / "config.schema.yaml")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate against the schema (filling defaults in place) and check what the schema cannot.

    Returns the same dict. Raises ConfigError naming the key and what is wrong. Passwords in URLs
    are masked in it first (secrets.py), so that no message, record or rule ever holds one.
    """
    # Imported here: library users who only resample should not pay for importing Snakemake.
    from snakemake.utils import validate

    hide_passwords(config)
    _check_schema(config)
    for name, ds in config["datasets"].items():  # before the defaults fill in band: 1
        if len(name) > MAX_NAME_LENGTH:
            raise ConfigError(f"datasets: dataset name {name[:40]}... is {len(name)} characters long, more than "
                              f"{MAX_NAME_LENGTH}: it names files and folders (results/tiles/<name>/), whose names "
                              "the file system limits")
        if "band" in ds and ds.get("bands") is not None:
            raise ConfigError(f"datasets.{name}: both band ({ds['band']}) and bands ({ds['bands']}) are given: "
                              f"keep band for one band of the input, bands for several (dataset '{name}')")
    validate(config, SCHEMA_PATH, set_default=True)  # fills defaults, as in any Snakemake workflow
    check_config(config)
    return config


def hide_passwords(config: dict[str, Any]) -> None:
    """Mask the password of every URL in the config (datasets' paths, the database's URL), in place;
    the passwords stay in this process's environment for the jobs it starts."""
    datasets = config.get("datasets")
    for ds in datasets.values() if isinstance(datasets, dict) else []:
        if isinstance(ds, dict) and isinstance(ds.get("path"), str):
            ds["path"] = secrets.hide(ds["path"])
        elif isinstance(ds, dict) and isinstance(ds.get("path"), list):
            ds["path"] = [secrets.hide(p) if isinstance(p, str) else p for p in ds["path"]]
    database = config.get("database")
    if isinstance(database, dict) and isinstance(database.get("url"), str):
        database["url"] = secrets.hide(database["url"])


def load_config(path: str) -> dict[str, Any]:
    return validate_config(read_yaml(path))


def read_yaml(path: str) -> dict[str, Any]:
    """A config file's contents; a YAML mistake is a ConfigError naming the file, line and column."""
    with open(path) as f:
        try:
            config = yaml.safe_load(f) or {}
        except yaml.MarkedYAMLError as exc:
            # Where the construct began (an unclosed quote) says more than where parsing gave up.
            def at(mark):
                return f"line {mark.line + 1}, column {mark.column + 1}"

            start, end = exc.context_mark, exc.problem_mark
            where = f", {at(start or end)}" if start or end else ""
            what = ", ".join(p for p in (exc.context, exc.problem) if p)
            if start and end:
                what += f" at {at(end)}"
            raise ConfigError(f"{path}{where}: not valid YAML: {what}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys (target, datasets, ...), "
                          f"not a {type(config).__name__}")
    return config


def check_config(config: dict[str, Any]) -> None:
    target = config["target"]
    target_crs(config)
    extent = target.get("extent", "union")
    if isinstance(extent, dict) and not (extent["right"] > extent["left"] and extent["top"] > extent["bottom"]):
        raise ConfigError(f"target.extent: right must exceed left and top must exceed bottom, got {extent}")
    output = config["output"]
    if output["compress"] == "deflate" and output["compress_level"] > 12:
        raise ConfigError(f"output.compress_level: deflate's levels are 1 to 12, got {output['compress_level']}")
    if OutputFormat.ZARR in output["formats"]:
        for name in config["datasets"]:
            base = name.removesuffix(ZARR_BAND_SUFFIX)
            if name in ZARR_COORDINATES or name == ZARR_OVERVIEWS or (base != name and base in config["datasets"]):
                taken = ("coordinates" if name in ZARR_COORDINATES else "overview levels" if name == ZARR_OVERVIEWS
                         else f"band labels of {base}")
                raise ConfigError(f"datasets.{name}: this name is taken in results/stack.zarr by its {taken}; "
                                  "rename the dataset")
    for name, ds in config["datasets"].items():
        paths = ds["path"] if isinstance(ds["path"], list) else [ds["path"]]
        if not paths:
            raise ConfigError(f"datasets.{name}.path: the list of files is empty (dataset '{name}')")
        for path in paths:
            check_path(name, path)  # globs are expanded, and checked, when the workflow is planned


def target_crs(config: dict[str, Any]):
    text = config["target"]["crs"]
    try:
        return parse_crs(text)
    except CRSError as exc:
        raise ConfigError(f"target.crs: cannot parse {text!r}: {exc}") from exc


def target_resolution(config: dict[str, Any]) -> tuple[float, float]:
    res = config["target"]["resolution"]
    if isinstance(res, (int, float)):
        return float(res), float(res)
    return float(res[0]), float(res[1])


def nodata_override(dataset: dict[str, Any]) -> float | None:
    value = dataset.get("nodata")
    if value is None:
        return None
    if isinstance(value, str):
        return math.nan
    return float(value)


def _check_schema(config: dict[str, Any]) -> None:
    """Validate against the schema with jsonschema itself, to word the error for people: the
    failing key as a dotted path, and for alternatives (oneOf) the one that came closest."""
    import jsonschema

    with open(SCHEMA_PATH) as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return
    while error.context:  # oneOf/anyOf: the alternative that came closest says the most
        error = jsonschema.exceptions.best_match(error.context)
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list((error.schema.get("properties") or {}))
        hints = []
        for unknown in sorted(set(error.instance) - set(known)):
            close = difflib.get_close_matches(str(unknown), known, n=1, cutoff=0.6)
            hints.append(f"{unknown!r}: did you mean {close[0]!r}?" if close else f"{unknown!r} is not a key here")
        if hints:
            raise ConfigError(f"invalid config at {key}: {'; '.join(hints)} (keys here: {', '.join(known)})")
    if error.validator == "minimum" and list(error.absolute_path) in (["memory", "tile_mb"], ["memory", "mosaic_mb"]):
        raise ConfigError(f"{key}: {error.instance} MB is too little for a job: Python, NumPy and GDAL take about "
                          f"{BASELINE_MB} MB before the first pixel, and a tile needs at least {MIN_TILE_SHARE_MB} MB "
                          f"beside them; use {MIN_JOB_MB} or more (a retry with --retries asks for more)")
    if error.validator == "pattern" and list(error.absolute_path) == ["datasets"]:
        raise ConfigError(f"invalid config at datasets: dataset name {error.instance!r} must match [A-Za-z0-9_-]+")
    raise ConfigError(f"invalid config at {key}: {error.message}")
