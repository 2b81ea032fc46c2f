"""Offline validators for the deployment files, from the pinned schemas in deploy/schemas/.

See deploy/schemas/README.md for where each schema comes from.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "deploy" / "schemas"
K8S = "kubernetes-v1.33.0-strict.json"
KINDS = {  # (apiVersion, kind) -> definition in the Kubernetes schema
    ("apps/v1", "Deployment"): "io.k8s.api.apps.v1.Deployment",
    ("v1", "Service"): "io.k8s.api.core.v1.Service",
    ("v1", "Secret"): "io.k8s.api.core.v1.Secret",
}
RAY_KINDS = {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob")}


def _load(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


@cache
def _registry() -> Registry:
    k8s, ray = _load(K8S), _load("kuberay-v1.json")
    return Registry().with_resources(
        [(k8s["$id"], Resource.from_contents(k8s)), (ray["$id"], Resource.from_contents(ray))]
    )


def manifest_errors(doc: dict) -> list[str]:
    """Schema errors of one Kubernetes object (empty when valid), each as 'path: message'."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in KINDS:
        base = _load(K8S)["$id"]
        schema = {"$ref": f"{base}#/$defs/{KINDS[key]}"}
        extra = [] if doc.get("metadata", {}).get("name") else ["metadata.name: missing"]
    elif key in RAY_KINDS:
        schema = {"$ref": f"{_load('kuberay-v1.json')['$id']}#/$defs/{key[1]}"}
        extra = []
    else:
        return [f"{key}: no pinned schema for this kind; add it to deploy/schemas"]
    validator = jsonschema.Draft202012Validator(schema, registry=_registry())
    found = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return extra + [_describe(e) for e in found]


def compose_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(_load("compose-spec.json"))
    return [_describe(e) for e in validator.iter_errors(doc)]


def _describe(e: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in e.absolute_path) or "(top)"
    best = jsonschema.exceptions.best_match([e, *e.context]) if e.context else e
    return f"{where}: {best.message}"
