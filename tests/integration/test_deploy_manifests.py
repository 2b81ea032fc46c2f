"""The deployment files are valid and agree with each other and with the pinned versions, offline:
the KubeRay and Kubernetes manifests against pinned schemas, docker-compose.yml against the
Compose Specification schema (and `docker compose config` where a compose client exists), the
Dockerfile against constraints.txt, requires-python and the shared install script."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet

from tests.integration._compose_local import interpolate, loopback_mapping
from tests.integration._deploy_schemas import compose_errors, manifest_errors

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
RAY_PIN = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)[1]


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def ray_pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


# -- Kubernetes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(manifests()))
def test_manifest_validates_against_pinned_schema(name):
    assert manifest_errors(manifests()[name]) == []


def test_schemas_reject_typos_and_unknown_fields():
    job = manifests()["rayjob.yaml:RayJob/critic-unlearn-toy"]
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2
    assert any("replica" in e for e in manifest_errors(bad))
    bad = copy.deepcopy(job)
    pod = bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    pod["containers"][0]["imagePullPolicyy"] = "Always"  # deep inside the Kubernetes pod schema
    assert any("imagePullPolicyy" in e for e in manifest_errors(bad))
    bad = copy.deepcopy(job)
    bad["spec"]["submissionMode"] = "HttpMode"
    assert manifest_errors(bad)
    deployment = copy.deepcopy(manifests()["redis.yaml:Deployment/critic-unlearn-replay"])
    del deployment["spec"]["selector"]
    assert any("selector" in e for e in manifest_errors(deployment))


def test_rayjob_runs_the_raycluster_spec_and_cleans_up():
    docs = manifests()
    cluster = docs["raycluster.yaml:RayCluster/critic-unlearn"]["spec"]
    job = docs["rayjob.yaml:RayJob/critic-unlearn-toy"]["spec"]
    assert job["rayClusterSpec"] == cluster, "rayjob.yaml's rayClusterSpec drifted from raycluster"
    assert job["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(job["runtimeEnvYAML"])
    assert set(env) == {"env_vars"}  # the image carries the code: no working_dir upload
    words = job["entrypoint"].split()
    assert words[:2] == ["critic-unlearn", "train"]
    assert (ROOT / words[2].removeprefix("/app/")).is_file(), "the image keeps the repo in /app"
    assert "runtime.kind=ray" in words


def test_ray_pods_match_pins_and_have_shm_gpu_and_auth():
    cluster = manifests()["raycluster.yaml:RayCluster/critic-unlearn"]["spec"]
    assert cluster["rayVersion"] == RAY_PIN == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    assert "gcsFaultToleranceOptions" not in cluster  # see the comment: never the replay Redis
    images = set()
    for pod in ray_pod_specs(cluster):
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        (container,) = pod["containers"]
        images.add(container["image"])
        assert any(
            m["mountPath"] == "/dev/shm" and m["name"] == shm[0]["name"]
            for m in container["volumeMounts"]
        )
        assert pod["securityContext"]["runAsNonRoot"] is True
    assert len(images) == 1, f"every Ray pod must run the same image (Ray + Python): {images}"
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1


def test_replay_redis_matches_the_entrypoint_and_keeps_secrets_out():
    docs = manifests()
    service = docs["redis.yaml:Service/critic-unlearn-replay"]
    deployment = docs["redis.yaml:Deployment/critic-unlearn-replay"]
    job = docs["rayjob.yaml:RayJob/critic-unlearn-toy"]["spec"]
    url = re.search(r"replay\.url=(\S+)", job["entrypoint"])[1]
    assert url == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    # the password is read from the environment by every process that connects, never passed
    assert re.search(r"replay\.password_env=(\S+)", job["entrypoint"])[1] == "REDIS_PASSWORD"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    redis = deployment["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][redis["args"].index("--maxmemory-policy") + 1] == "noeviction"
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    (gpu,) = job["rayClusterSpec"]["workerGroupSpecs"]
    worker = gpu["template"]["spec"]["containers"][0]
    for c in (redis, head, worker):  # the actors on worker pods connect to the replay too
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
        assert refs["REDIS_PASSWORD"]["name"] == "critic-unlearn-redis", c["name"]
    for name, doc in docs.items():
        assert doc["kind"] != "Secret", f"{name}: secrets are created by the user, not committed"
        for literal in re.findall(r"name: (\w+)\n\s+value: ", yaml.safe_dump(doc)):
            assert not re.search(r"PASSWORD|TOKEN|SECRET|KEY", literal), f"{name}: {literal}"


# -- docker compose -----------------------------------------------------------------------------
def compose_doc(env: dict[str, str] | None = None) -> dict:
    raw = yaml.safe_load(COMPOSE.read_text())
    return raw if env is None else _interpolated(raw, env)


def _interpolated(node, env):
    if isinstance(node, dict):
        return {k: _interpolated(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolated(v, env) for v in node]
    return interpolate(node, env) if isinstance(node, str) else node


def test_compose_file_validates_against_compose_spec():
    assert compose_errors(compose_doc()) == []
    assert compose_errors(compose_doc({})) == []  # after interpolation with the defaults, too
    bad = compose_doc()
    bad["services"]["ray-head"]["shm_sizee"] = "2gb"
    assert any("shm_sizee" in e for e in compose_errors(bad))


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no docker compose client here; the schema test above covers the file",
)
def test_docker_compose_config_accepts_the_file():
    r = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_compose_services_ports_and_scaling():
    doc = compose_doc({})
    services = doc["services"]
    assert set(services) == {"redis", "ray-head", "ray-worker", "submit"}
    head = services["ray-head"]["command"][-1]
    assert "--port=6380" in head and "--dashboard-port=8265" in head  # GCS is not on Redis's 6379
    assert "--num-cpus=0" in head  # actors and the learner must run on the workers
    assert "--port 6379" in " ".join(services["redis"]["command"])
    assert "ray start --block" in services["ray-worker"]["command"][-1]
    assert "--address=ray-head:6380" in services["ray-worker"]["command"][-1]
    assert "container_name" not in services["ray-worker"]  # --scale needs generated names
    assert {s["image"] for n, s in services.items() if n != "redis"} == {"critic-unlearn:dev-cpu"}
    assert services["redis"]["image"] == "redis:7.2-alpine"  # REDIS_IMAGE's default
    for name in ("ray-head", "ray-worker"):
        assert services[name]["shm_size"]
    deps = services["submit"]["depends_on"]
    assert deps["ray-head"]["condition"] == deps["redis"]["condition"] == "service_healthy"
    submit = services["submit"]["command"][-1]
    assert "ray job submit" in submit and "--no-wait" not in submit  # follow logs, exit with job
    assert "/app/configs/toy_forget_red.yaml" in submit
    assert (ROOT / "configs" / "toy_forget_red.yaml").is_file()
    assert "redis://redis:6379/0" in submit


def test_compose_variables_are_mechanically_mappable():
    """What tests/integration/test_deploy_compose_local.py relies on (see its docstring)."""
    text = COMPOSE.read_text()
    for m in re.finditer(r"\$\{(\w+)(:?[-?+])?", text.replace("$$", "")):
        assert m[2] == ":-", f"${{{m[1]}}} needs a default (${{{m[1]}:-...}}) so `up` just works"
    mapped = compose_doc(loopback_mapping(text))
    for name, svc in mapped["services"].items():
        assert isinstance(svc["command"], list), f"{name}: commands are argv lists"
        hard = re.findall(r"(?:^|[=/@\s])((?:ray-head|redis):\d+)", " ".join(svc["command"]))
        assert hard == [], f"{name} hard-codes {hard}: use ${{..._HOST:-name}}"


# -- Dockerfile ---------------------------------------------------------------------------------
def test_dockerfile_builds_on_the_pinned_ray_and_python_with_the_shared_script():
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    assert args["RAY_VERSION"] == RAY_PIN
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert args["PYTHON_TAG"] == py, f"the image's Python must be this project's ({py})"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert SpecifierSet(requires).contains(here), f"requires-python {requires!r} excludes {here}"
    # the base is a build argument (deploy/base-image.sh builds a stand-in without a registry);
    # its default is the official image of the pinned Ray and Python
    assert args["BASE_IMAGE"] == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${VARIANT}"
    assert re.findall(r"^FROM (.+)$", text, re.M) == ["${BASE_IMAGE}"]
    runs = " ".join(re.findall(r"^RUN ((?:.*\\\n)*.+)", text, re.M))  # with continuation lines
    assert "scripts/install.sh" in runs  # the same install as `make setup` and CI
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "constraints.txt" in install
    user = [m.start() for m in re.finditer(r"^USER (\S+)", text, re.M)]
    first_run = text.index("\nRUN ")
    assert user and user[0] < first_run and "USER root" not in text
    assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|TOKEN|SECRET)", text, re.M)


def test_dockerignore_keeps_local_state_and_secrets_out():
    ignored = set((ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split())
    assert {".git", ".venv", "runs", ".cache", ".env"} <= ignored
