"""Checks a form-encoded request against one operation of an OpenAPI 3 description (Twilio's, here).

A small validator for what Twilio's ``application/x-www-form-urlencoded`` bodies use:
required fields, unknown field names, one value per field unless the schema is an
array, and per value its schema's ``type`` (string, integer, number, boolean),
``enum``, ``pattern``, ``minLength``/``maxLength`` and the formats ``uri`` (an absolute
http(s) URL with a host), ``http-method`` and ``endpoint`` (not empty). Path
parameters are checked the same way. ``$ref`` schemas are resolved.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SPEC_NAME = Path("shared") / "specs" / "twilio_api_v2010.json"
"""Twilio's published OpenAPI description of API version 2010-04-01, beside the repository (``../shared``)."""

SUBSET_PATHS = ("/2010-04-01/Accounts/{AccountSid}/Calls.json", "/2010-04-01/Accounts/{AccountSid}/Messages.json")
"""The operations (``post``) the subset keeps."""

SUBSET = Path(__file__).resolve().parent / "twilio_api_v2010_subset.json"
"""The operations the stand-ins check, cut out of that description by ``scripts/twilio_spec_subset.py``: the
tests run where the whole description is not at hand (a CI clone)."""


def find_spec(start: Path | None = None) -> Path | None:
    """The whole description in the nearest ``shared/specs`` above ``start`` (this file), if there is one."""
    start = start or Path(__file__).resolve()
    return next((folder / SPEC_NAME for folder in start.parents if (folder / SPEC_NAME).is_file()), None)


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def subset(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``post`` operations of :data:`SUBSET_PATHS` and every component they refer to, directly or not."""
    out: dict[str, Any] = {"openapi": spec["openapi"], "info": spec["info"],
                           "paths": {p: {"post": spec["paths"][p]["post"]} for p in SUBSET_PATHS}}
    pending, seen = _refs(out["paths"]), set()
    while pending:
        ref = pending.pop()
        if ref in seen or not ref.startswith("#/"):
            continue
        seen.add(ref)
        source, target = spec, out
        parts = ref.removeprefix("#/").split("/")
        for part in parts[:-1]:
            source = source[part]
            target = target.setdefault(part, {})
        target[parts[-1]] = source[parts[-1]]
        pending |= _refs(source[parts[-1]])
    return out



@lru_cache(maxsize=4)
def load_spec(path: Path | None = None) -> dict[str, Any]:
    return dict(json.loads((path or SUBSET).read_text(encoding="utf-8")))


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def operation(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return dict(spec["paths"][path][method.lower()])


def form_schema(spec: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    content = op["requestBody"]["content"]["application/x-www-form-urlencoded"]
    return _resolve(spec, content["schema"])


def value_problems(spec: dict[str, Any], name: str, schema: dict[str, Any], value: str) -> list[str]:
    """What is wrong with one value of field ``name`` under ``schema``."""
    schema = _resolve(spec, schema)
    kind = schema.get("type", "string")
    problems: list[str] = []
    if kind == "integer" and not re.fullmatch(r"-?\d+", value):
        problems.append(f"{name}: {value!r} is not an integer")
    elif kind == "number" and not re.fullmatch(r"-?\d+(\.\d+)?", value):
        problems.append(f"{name}: {value!r} is not a number")
    elif kind == "boolean" and value not in ("true", "false"):
        problems.append(f"{name}: {value!r} is not a boolean (true or false)")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{name}: {value!r} is not one of {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{name}: {value!r} does not match {schema['pattern']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        problems.append(f"{name}: shorter than {schema['minLength']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        problems.append(f"{name}: longer than {schema['maxLength']}")
    fmt = schema.get("format")
    if fmt == "uri":
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or "_" in (parts.hostname or ""):
            problems.append(f"{name}: {value!r} is not an absolute http(s) URL with a valid host")
    elif fmt == "endpoint" and not value.strip():
        problems.append(f"{name}: empty endpoint")
    return problems


def request_problems(path_template: str, method: str, path_params: dict[str, str],
                     fields: dict[str, list[str]], spec: dict[str, Any] | None = None) -> list[str]:
    """Every way the request breaks the operation's description (empty: valid)."""
    spec = spec or load_spec()
    op = operation(spec, path_template, method)
    problems: list[str] = []
    for param in op.get("parameters", []):
        if param.get("in") == "path":
            value = path_params.get(param["name"])
            if value is None:
                problems.append(f"path parameter {param['name']} missing")
            else:
                problems += value_problems(spec, param["name"], param["schema"], value)
    schema = form_schema(spec, op)
    properties: dict[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if not fields.get(name):
            problems.append(f"{name}: required")
    for name, values in fields.items():
        prop = properties.get(name)
        if prop is None:
            problems.append(f"{name}: not a field of this operation")
            continue
        prop = _resolve(spec, prop)
        if prop.get("type") == "array":
            item = prop.get("items", {"type": "string"})
            for value in values:
                problems += value_problems(spec, name, item, value)
        elif len(values) != 1:
            problems.append(f"{name}: given {len(values)} times")
        else:
            problems += value_problems(spec, name, prop, values[0])
    return problems
