"""The configuration reference in docs/configuration.md, written from the config schema.

``python -m workflow_lib.schema_docs`` (``make docs``) rewrites the part of docs/configuration.md
between its two markers; tests/test_docs.py fails when that part differs from the schema, so
that the reference can never go stale.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

from workflow_lib.config import SCHEMA_PATH

DOC_PATH = "docs/configuration.md"
BEGIN = "<!-- every key: written by `make docs` from workflow_lib/schemas/config.schema.yaml; do not edit -->"
END = "<!-- end of every key -->"


def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def reference(schema: dict[str, Any]) -> str:
    """One table per section of the config: each key with its type, default and description."""
    lines = ["| key | type | default | what |", "|---|---|---|---|"]
    for key, prop in schema["properties"].items():
        _rows(key, prop, schema.get("required", []), lines)
    return "\n".join(lines) + "\n"


def _rows(key: str, prop: dict[str, Any], required: list[str], lines: list[str], name: str | None = None) -> None:
    """The rows of ``key`` (its last part: ``name``) and of the keys under it."""
    children = prop.get("properties")
    needed = (name or key) in required
    if key == "datasets":  # {name: dataset}: the dataset's keys under datasets.<name>
        lines.append(_row(key, prop, needed, kind="mapping of name to dataset"))
        item = prop["additionalProperties"]
        for name, child in item["properties"].items():
            _rows(f"datasets.<name>.{name}", child, item.get("required", []), lines, name)
        return
    if children and prop.get("type") == "object":
        lines.append(_row(key, prop, needed, kind="section"))
        for child_name, child in children.items():
            _rows(f"{key}.{child_name}", child, prop.get("required", []), lines, child_name)
        return
    lines.append(_row(key, prop, needed))


def _row(key: str, prop: dict[str, Any], required: bool, kind: str | None = None) -> str:
    if kind == "section":
        default = ""
    elif required:
        default = "required"
    elif "default" in prop:
        default = f"`{json.dumps(prop['default'])}`"
    else:
        default = ""
    # Markdown: "|" would end the cell, and "<dataset>" would be taken for an HTML tag.
    text = " ".join(str(prop.get("description", "")).split()).replace("|", "\\|")
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return f"| `{key}` | {kind or _kind(prop)} | {default} | {text} |"


def _kind(prop: dict[str, Any]) -> str:
    """The type in words, with its allowed values or bounds."""
    if "oneOf" in prop:
        return " or ".join(_kind(p) for p in prop["oneOf"] if p.get("type") != "null")
    if "enum" in prop:
        return ", ".join(f"`{v}`" for v in prop["enum"])
    kind = prop.get("type", "any")
    if kind == "array":
        n = prop.get("minItems")
        size = f"[{n}]" if n is not None and n == prop.get("maxItems") else ""
        return f"list{size} of {_kind(prop.get('items', {}))}"
    if kind == "object":
        return "mapping"
    bounds = []
    if "minimum" in prop:
        bounds.append(f">= {prop['minimum']}")
    if "exclusiveMinimum" in prop:
        bounds.append(f"> {prop['exclusiveMinimum']}")
    if "maximum" in prop:
        bounds.append(f"<= {prop['maximum']}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def rewrite(text: str, table: str) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n\n" + table + "\n" + text[end:]


def main(argv: list[str]) -> int:
    path = argv[0] if argv else DOC_PATH
    with open(path) as f:
        text = f.read()
    new = rewrite(text, reference(load_schema()))
    if new != text:
        with open(path, "w") as f:
            f.write(new)
    print(f"{path}: {'rewritten' if new != text else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
