"""Regenerate the vendored schemas in this folder from pinned PyPI wheels (run by hand, offline
after the download; the tests only read the outputs).

    pip download --no-deps -d /tmp/w kubernetes-validate==1.37.0 check-jsonschema==0.39.0
    python deploy/schemas/vendor_schemas.py /tmp/w

- kubernetes-v1.33.0-strict.json: the Kubernetes v1.33.0 "local-strict" definitions shipped in
  kubernetes-validate 1.37.0 (converted from the Kubernetes OpenAPI by yannh/kubernetes-json-schema,
  Apache-2.0), pruned to what our manifests reach and stripped of descriptions (validation is
  unchanged: only `description` keys are dropped).
- compose-spec.json: the Compose Specification schema (compose-spec/compose-spec, Apache-2.0) as
  vendored in check-jsonschema 0.39.0.
kuberay-v1.json is written by hand (see its $comment); it is not generated here.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
K8S_WHEEL = "kubernetes_validate-1.37.0-py3-none-any.whl"
K8S_DEFS = "kubernetes_validate/kubernetes-json-schema/v1.33.0-local-strict/_definitions.json"
COMPOSE_WHEEL = "check_jsonschema-0.39.0-py3-none-any.whl"
COMPOSE_SCHEMA = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
ROOTS = [  # what deploy/kuberay/*.yaml and kuberay-v1.json refer to
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.Secret",
    "io.k8s.api.core.v1.PodTemplateSpec",
    "io.k8s.api.core.v1.ServiceSpec",
    "io.k8s.api.core.v1.EnvVar",
    "io.k8s.api.core.v1.EnvVarSource",
    "io.k8s.api.core.v1.EnvFromSource",
    "io.k8s.api.core.v1.VolumeMount",
    "io.k8s.api.core.v1.ResourceRequirements",
    "io.k8s.api.core.v1.SecurityContext",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
]


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[1]} if "$ref" in node else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _strip(node: object) -> object:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def kubernetes(wheels: Path) -> dict:
    with zipfile.ZipFile(wheels / K8S_WHEEL) as z:
        full = json.loads(z.read(K8S_DEFS))
    defs, keep, todo = full["$defs"], set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(_refs(defs[name]) - keep)
    return {
        "$schema": full["$schema"],
        "$id": full["$id"],
        "$comment": f"Kubernetes v1.33.0 local-strict definitions from {K8S_WHEEL} (PyPI), "
        f"{K8S_DEFS}; pruned to {len(keep)} of {len(defs)} definitions reachable from "
        f"{', '.join(ROOTS)}; descriptions removed. Regenerate: deploy/schemas/vendor_schemas.py",
        "$defs": {name: _strip(defs[name]) for name in sorted(keep)},
    }


def compose(wheels: Path) -> dict:
    with zipfile.ZipFile(wheels / COMPOSE_WHEEL) as z:
        schema = json.loads(z.read(COMPOSE_SCHEMA))
    schema["$comment"] = (
        f"Compose Specification schema from {COMPOSE_WHEEL} (PyPI), "
        f"{COMPOSE_SCHEMA}. Regenerate: deploy/schemas/vendor_schemas.py"
    )
    return schema


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    wheels = Path(sys.argv[1])
    out = {
        "kubernetes-v1.33.0-strict.json": kubernetes(wheels),
        "compose-spec.json": compose(wheels),
    }
    for name, doc in out.items():
        (HERE / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
