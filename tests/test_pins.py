"""envs/workflow.yaml (for conda users) pins the same packages as pyproject.toml."""

import os
import tomllib

import yaml

from .helpers import REPO


def test_conda_env_pins_agree_with_pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        pins = set(tomllib.load(f)["project"]["dependencies"])
    with open(os.path.join(REPO, "envs", "workflow.yaml")) as f:
        env = yaml.safe_load(f)
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip) == pins
    assert all("==" in p for p in pins), "every dependency is pinned"


def test_every_rule_uses_the_pinned_environment():
    rules_dir = os.path.join(REPO, "rules")
    for name in os.listdir(rules_dir):
        text = open(os.path.join(rules_dir, name)).read()
        assert text.count("script:") == text.count('"../envs/workflow.yaml"'), name
