"""The documentation says what the code does: the table of config keys is the schema's, and the
config samples in the README and docs are configs the schema accepts."""

import os
import re

import jsonschema
import pytest
import yaml

from workflow_lib.schema_docs import DOC_PATH, load_schema, reference, rewrite

from .helpers import REPO


def test_the_table_of_config_keys_is_written_from_the_schema():
    with open(os.path.join(REPO, DOC_PATH)) as f:
        text = f.read()
    assert rewrite(text, reference(load_schema())) == text, "docs/configuration.md is stale: run `make docs`"
    schema = load_schema()
    for key in [*schema["properties"], *schema["properties"]["memory"]["properties"]]:
        assert f"`{key}`" in text or f"`memory.{key}`" in text, key


def yaml_samples(path):
    """The ```yaml blocks of a Markdown file that are whole configs (they have datasets)."""
    with open(os.path.join(REPO, path)) as f:
        blocks = re.findall(r"```yaml\n(.*?)```", f.read(), re.S)
    return [b for b in (yaml.safe_load(b) for b in blocks) if isinstance(b, dict) and "datasets" in b]


@pytest.mark.parametrize("path", ["README.md", "docs/configuration.md", "config/config.yaml"])
def test_config_samples_are_accepted_by_the_schema(path):
    if path.endswith(".yaml"):
        with open(os.path.join(REPO, path)) as f:
            samples = [yaml.safe_load(f)]
    else:
        samples = yaml_samples(path)
    assert samples, path
    validator = jsonschema.Draft202012Validator(load_schema())
    for sample in samples:
        # Samples of datasets alone: with a target, so that their keys are checked all the same.
        sample = {"target": {"crs": "EPSG:3035", "resolution": 100}, **sample}
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(sample)]
        assert not errors, (path, errors)
