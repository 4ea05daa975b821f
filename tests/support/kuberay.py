"""KubeRay's CRD as the API server reads it: its structural schema as JSON Schema (Draft 7), with the server's
pruning of undeclared fields turned into errors, so a manifest field the server would drop fails a test."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD = Path(__file__).resolve().parents[1] / "data" / "kuberay" / "ray.io_rayservices.yaml"
Schema = dict[str, Any]
INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}



def structural_to_jsonschema(node: Schema) -> Schema:
    """One OpenAPI v3 structural-schema node as Draft 7, with the API server's pruning turned into errors."""
    out = dict(node)
    if "properties" in node:
        out["properties"] = {k: structural_to_jsonschema(v) for k, v in node["properties"].items()}
    for key in ("items", "not"):
        if isinstance(node.get(key), dict):
            out[key] = structural_to_jsonschema(node[key])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = structural_to_jsonschema(node["additionalProperties"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [structural_to_jsonschema(s) for s in node[key]]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)  # a structural schema may omit it here; a Quantity is 8 or "8" or "500m"
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(node.get("type"), str):
        out["type"] = [node["type"], "null"]
    if node.get("format") in INT_BOUNDS and node.get("type") == "integer":
        out["minimum"] = max(out.get("minimum", -math.inf), INT_BOUNDS[node["format"]][0])
        out["maximum"] = min(out.get("maximum", math.inf), INT_BOUNDS[node["format"]][1])
    if node.get("x-kubernetes-embedded-resource"):
        out["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {},
                             **out.get("properties", {})}
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    # Without preserve-unknown-fields the server prunes whatever `properties` does not name, even on a bare
    # `type: object`; only an explicit `additionalProperties` (a map) keeps unnamed keys.
    if (node.get("type") == "object" and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


# The root `metadata` is a bare object in every CRD: the API server checks it as ObjectMeta itself. These are the
# ObjectMeta fields a manifest sets; a misspelt one is still an error.
OBJECT_META: Schema = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def list_map_keys_unique(validator: Any, list_type: str, instance: Any, schema: Schema) -> Iterator[Any]:
    """`x-kubernetes-list-type: map`: the server rejects two entries with the same keys (two `env` named alike)."""
    if list_type != "map" or not validator.is_type(instance, "array"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    defaults = {k: v.get("default") for k, v in schema.get("items", {}).get("properties", {}).items()}
    seen: set[str] = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = json.dumps([item.get(k, defaults.get(k)) for k in keys])
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate entry for {keys} = {key}")
        seen.add(key)


KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-kubernetes-list-type": list_map_keys_unique}
)


def served_storage_version(crd: Schema) -> Schema:
    versions = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    assert len(versions) == 1, "a CRD has exactly one storage version"
    return versions[0]


@cache
def crd() -> Schema:
    return yaml.safe_load(CRD.read_text())


@cache
def validator() -> Any:
    schema = structural_to_jsonschema(served_storage_version(crd())["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    KubeValidator.check_schema(schema)
    return KubeValidator(schema)


def schema_errors(manifest: Schema) -> list[str]:
    errors = sorted(validator().iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
