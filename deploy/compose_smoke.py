"""`make compose-smoke`: docker-compose.yml brought up as real containers on this machine.

Phases, one line each with its time: build (the image from deploy/Dockerfile), up (redis,
ray-head, ray-worker, started through the compose client and waited on as depends_on says),
job (the `submit` service runs the toy scenario with `ray job submit` to its end), checks (the
job succeeded; the run folder in the `runs` volume holds the checkpoint and the adapter), down
(`down -v`: containers, network and volumes removed, also when a phase failed).

Engines, the first that works (or CU_CONTAINER_ENGINE=docker|podman):
  docker   a daemon that answers `docker info`, and `docker compose` (v2);
  podman   with deploy/podman/containers.conf (runc, cgroupfs, no default ulimits: podman's
           defaults fail in this sandbox; a CONTAINERS_CONF of your own wins) and podman-compose
           >= 1.1 (PODMAN_COMPOSE, or one pip-installed into .cache/compose-tools: Debian
           bookworm's 1.0.3 leaves `${RAY_NODE_IP:-}` uninterpolated).
Where no registry serves rayproject/ray and redis (CU_BASE=local, or auto when the pull fails),
deploy/base-image.sh builds both from Debian's packages. Where this host's pip reads local wheel
folders or indexes (the case here: torch 2.14.1 lies on disk), the podman build mounts that pip
configuration read-only, so the image installs the very same files as `make setup`.

Why the script waits for health itself: podman runs healthchecks from systemd timers, and this
sandbox has no systemd, so `podman healthcheck run` is called here on compose's schedule; and
podman-compose ignores `condition: service_healthy` on podman < 4.6. With Docker, the daemon
runs the checks and the script reads them.

  .venv/bin/python deploy/compose_smoke.py            # the whole run (make compose-smoke)
  .venv/bin/python deploy/compose_smoke.py --probe    # prints the engine, or why none: exit 3
Logs of every service and the build land in .cache/compose-smoke/ (kept after a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOGS = ROOT / ".cache" / "compose-smoke"
TOOLS = ROOT / ".cache" / "compose-tools"
PODMAN_COMPOSE_PIN = "podman-compose==1.6.0"
IMAGE_TAG = "dev-cpu"
LOCAL_RAY_BASE = "localhost/critic-unlearn-base:{py}-bookworm"
LOCAL_REDIS = "localhost/critic-unlearn-redis:bookworm"
OFFICIAL_REDIS = "redis:7.2-alpine"  # docker-compose.yml's default REDIS_IMAGE
# The smoke job: the toy scenario, cut short (a checkpoint at step 2 and at the end).
SMOKE_OVERRIDES = (
    "learner.max_steps=4 learner.checkpoint_every=2 sampler.batch_size=8 learner.batch_size=8 "
    "replay.min_size_to_sample=8 critic.pretrain_trajectories=32 critic.pretrain_epochs=2"
)


class SmokeError(RuntimeError):
    pass


def run(argv, *, env=None, check=True, capture=True, timeout=None, log: Path | None = None):
    """One command; its output goes to `log` (appended) when given, else is captured."""
    kw = {"env": env, "timeout": timeout, "text": True}
    if log is not None:
        with log.open("a") as out:
            out.write(f"\n$ {shlex.join(map(str, argv))}\n")
            out.flush()
            r = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **kw)
    elif capture:
        r = subprocess.run(argv, capture_output=True, **kw)
    else:
        r = subprocess.run(argv, **kw)
    if check and r.returncode != 0:
        detail = f"; see {log}" if log else f":\n{(r.stderr or r.stdout or '').strip()[-2000:]}"
        raise SmokeError(f"`{shlex.join(map(str, argv))}` exited {r.returncode}{detail}")
    return r


# -- the engine ---------------------------------------------------------------------------------
class Engine:
    def __init__(self, name: str, compose: list[str], env: dict[str, str], version: str):
        self.name, self.compose, self.env, self.version = name, compose, env, version

    def __call__(self, *args, **kw):
        return run([self.name, *args], env=self.env, **kw)

    def describe(self) -> str:
        return self.version


def _works(argv, env) -> subprocess.CompletedProcess | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r if r.returncode == 0 else None


def _podman_compose(env) -> list[str] | None:
    """A podman-compose >= 1.1: PODMAN_COMPOSE, the one on PATH, or one installed in .cache."""
    candidates = [
        os.environ.get("PODMAN_COMPOSE"),
        shutil.which("podman-compose"),
        str(TOOLS / "bin" / "podman-compose"),
    ]
    for c in filter(None, candidates):
        r = _works([c, "version"], env)
        m = r and re.search(r"podman-compose version (\d+)\.(\d+)", r.stdout + r.stderr)
        if m and (int(m[1]), int(m[2])) >= (1, 1):
            return [c]
    return None


def _install_podman_compose(env) -> list[str]:
    if not (TOOLS / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(TOOLS)])
    run([str(TOOLS / "bin" / "pip"), "install", "--quiet", PODMAN_COMPOSE_PIN])
    found = _podman_compose(env)
    if not found:
        raise SmokeError(f"installed {PODMAN_COMPOSE_PIN} into {TOOLS}, but it does not run")
    return found


def find_engine(install: bool) -> Engine | str:
    """The engine to use, or a one-line reason why there is none."""
    wanted = os.environ.get("CU_CONTAINER_ENGINE")
    reasons = []
    env = dict(os.environ)
    if wanted in (None, "docker") and shutil.which("docker"):
        info = _works(["docker", "info", "--format", "{{.ServerVersion}}"], env)
        comp = info and _works(["docker", "compose", "version", "--short"], env)
        if info and comp:
            version = f"docker {info.stdout.strip()} + docker compose {comp.stdout.strip()}"
            return Engine("docker", ["docker", "compose"], env, version)
        reasons.append("docker: " + ("no compose v2 plugin" if info else "no daemon answers"))
    if wanted in (None, "podman") and shutil.which("podman"):
        penv = dict(env)
        penv.setdefault("CONTAINERS_CONF", str(ROOT / "deploy" / "podman" / "containers.conf"))
        info = _works(["podman", "version", "--format", "{{.Server.Version}}"], penv)
        ok = info and _works(["podman", "run", "--help"], penv) and _works(["podman", "info"], penv)
        if ok:
            compose = _podman_compose(penv)
            if compose is None and install:
                compose = _install_podman_compose(penv)
            if compose is not None or not install:
                cv = _works([*(compose or ["true"]), "version"], penv)
                cvs = re.search(r"podman-compose version (\S+)", cv.stdout) if cv else None
                pc = cvs[1] if cvs else PODMAN_COMPOSE_PIN.split("==")[1] + " (to install)"
                version = f"podman {info.stdout.strip()} + podman-compose {pc}"
                return Engine("podman", compose or [], penv, version)
        reasons.append("podman: `podman info` fails")
    if not reasons:
        reasons.append("neither docker nor podman is installed")
    return "no working container engine (" + "; ".join(reasons) + ")"


# -- phases ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dockerfile_arg(name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.M)[1]


def host_pip_mounts() -> tuple[list[str], str | None]:
    """Read-only mounts of this host's pip configuration and the local wheel folders and indexes
    it names, and its extra-index-url (for the build's TORCH_INDEX_URL); empty when this host's
    pip reads nothing local."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True
    )
    files = [Path(p) for p in re.findall(r"^\s+(/\S+), exists: True", r.stdout, re.M)]
    values = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    paths, extra_index = set(), None
    for key, value in re.findall(r"^(\S+?)='(.*)'$", values, re.M):
        for item in value.split():
            local = item.removeprefix("file://")
            if local.startswith("/") and Path(local).exists():
                # an index's pages point at ../../files: mount the index's parent folder
                paths.add(
                    Path(local).parent if local.rstrip("/").endswith("simple") else Path(local)
                )
        if key.endswith("extra-index-url"):
            extra_index = value
    if not any(not str(p).startswith("/etc/") for p in paths):
        return [], None  # pip reads nothing local: the image uses the Dockerfile's own index
    mounts = []
    for p in sorted({*files, *paths}):
        mounts += ["-v", f"{p}:{p}:ro"]
    return mounts, extra_index


def base_images(engine: Engine, log: Path) -> tuple[str, str]:
    """(BASE_IMAGE, REDIS_IMAGE): the official ones when the engine has or can pull them,
    else the local Debian-built ones (deploy/base-image.sh)."""
    py = dockerfile_arg("PYTHON_TAG")
    official = f"rayproject/ray:{dockerfile_arg('RAY_VERSION')}-{py}-{dockerfile_arg('VARIANT')}"
    mode = os.environ.get("CU_BASE", "auto")
    if mode == "auto":
        have = all(
            engine("image", "inspect", img, check=False).returncode == 0
            or engine("pull", "-q", img, check=False, log=log, timeout=300).returncode == 0
            for img in (official, OFFICIAL_REDIS)
        )
        mode = "official" if have else "local"
    if mode == "official":
        return official, OFFICIAL_REDIS
    run(
        [str(ROOT / "deploy" / "base-image.sh"), "all"],
        env={**engine.env, "ENGINE": engine.name},
        log=log,
    )
    return LOCAL_RAY_BASE.format(py=py), LOCAL_REDIS


def build(engine: Engine, image: str, log: Path) -> str:
    base, redis_image = base_images(engine, log)
    argv = ["build", "-f", str(DOCKERFILE), "-t", image, "--build-arg", f"BASE_IMAGE={base}"]
    if engine.name == "podman":  # both read deploy/Dockerfile.dockerignore (checked: podman 4.3)
        mounts, extra_index = host_pip_mounts()
        argv += mounts
        if extra_index:
            argv += ["--build-arg", f"TORCH_INDEX_URL={extra_index}"]
    before = engine("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()
    engine(*argv, str(ROOT), log=log)
    after = engine("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
    if before and before != after:  # the previous build, now untagged: its code layer only
        engine("rmi", before, check=False)
    return redis_image


class Project:
    """One compose project: its variables, its containers, its health."""

    def __init__(self, engine: Engine, name: str, variables: dict[str, str]):
        self.engine, self.name = engine, name
        self.env = {**engine.env, **variables}
        self.hc = _healthchecks(variables)

    def compose(self, *args, **kw):
        argv = [*self.engine.compose, "-f", str(COMPOSE_FILE), "-p", self.name, *args]
        return run(argv, env=self.env, **kw)

    def container(self, service: str) -> str:
        r = self.engine(
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={self.name}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.Names}}",
        )
        names = r.stdout.split()
        if not names:
            raise SmokeError(f"no container for service {service}")
        return names[0]

    def state(self, service: str) -> dict:
        r = self.engine("inspect", self.container(service))
        return json.loads(r.stdout)[0]["State"]

    def wait_healthy(self, service: str, log: Path) -> None:
        """compose's `condition: service_healthy`: the service's healthcheck passes before its
        start period plus interval x retries run out."""
        interval, retries, start = self.hc[service]
        deadline = time.monotonic() + start + interval * retries + 30
        while True:
            st = self.state(service)
            if not st.get("Running"):
                raise SmokeError(f"{service} exited ({st.get('ExitCode')}); see {log}")
            if self.engine.name == "podman":
                ok = (
                    self.engine(
                        "healthcheck", "run", self.container(service), check=False
                    ).returncode
                    == 0
                )
            else:
                ok = (st.get("Health") or {}).get("Status") == "healthy"
            if ok:
                return
            if time.monotonic() > deadline:
                raise SmokeError(f"{service} never became healthy; see {log}")
            time.sleep(interval)

    def wait_resolves(self, service: str, names: list[str], log: Path, timeout: float = 30):
        """Inside `service`, every name in `names` resolves (the compose network's DNS)."""
        probe = "import socket, sys; [socket.gethostbyname(n) for n in sys.argv[1:]]"
        deadline = time.monotonic() + timeout
        while True:
            r = self.engine(
                "exec", self.container(service), "python", "-c", probe, *names, check=False
            )
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                with log.open("a") as out:
                    out.write(f"\nname resolution in {service}:\n{r.stdout}{r.stderr}\n")
                    for f in sorted(Path("/run/containers/networks/aardvark-dns").glob("*")):
                        out.write(f"--- {f}\n{f.read_text(errors='replace')}\n")
                raise SmokeError(
                    f"{names} do not resolve inside {service} after {timeout:.0f} s: "
                    f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}; see {log}"
                )
            time.sleep(1)

    def dump_logs(self, log_dir: Path) -> None:
        for service in ("redis", "ray-head", "ray-worker", "submit"):
            try:
                name = self.container(service)
            except SmokeError:
                continue
            r = self.engine("logs", name, check=False)
            (log_dir / f"{service}.log").write_text((r.stdout or "") + (r.stderr or ""))


def _healthchecks(variables) -> dict[str, tuple[float, int, float]]:
    import yaml

    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    out = {}
    for name, svc in doc["services"].items():
        hc = svc.get("healthcheck")
        if hc:
            out[name] = (
                _seconds(hc.get("interval", "30s")),
                int(hc.get("retries", 3)),
                _seconds(hc.get("start_period", "0s")),
            )
    return out


def _seconds(value) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(value)):
        total += float(amount) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def smoke(engine: Engine, job_timeout: float) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.glob("*.log"):  # this run's logs only
        old.unlink()
    image = f"critic-unlearn:{IMAGE_TAG}"
    print(f"engine: {engine.describe()}; logs in {LOGS.relative_to(ROOT)}/", flush=True)

    def phase(name: str, t0: float, detail: str = "") -> None:
        print(f"{name:<7} ok  {time.monotonic() - t0:6.1f} s  {detail}".rstrip(), flush=True)

    t0 = time.monotonic()
    redis_image = build(engine, image, LOGS / "build.log")
    size = engine("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
    phase("build", t0, f"{image}, {int(size) / 1e9:.1f} GB")

    project = Project(
        engine,
        f"cu-smoke-{os.getpid()}",
        {
            "IMAGE_TAG": IMAGE_TAG,
            "REDIS_IMAGE": redis_image,
            "RAY_DASHBOARD_PORT": str(free_port()),  # published on 127.0.0.1: never a taken port
            "TRAIN_OVERRIDES": os.environ.get("TRAIN_OVERRIDES", SMOKE_OVERRIDES),
        },
    )
    up_log = LOGS / "compose.log"
    failed = True
    try:
        t0 = time.monotonic()
        project.compose("up", "-d", "--no-build", "--no-deps", "redis", "ray-head", log=up_log)
        project.wait_healthy("redis", up_log)
        project.wait_healthy("ray-head", up_log)
        project.compose("up", "-d", "--no-build", "--no-deps", "ray-worker", log=up_log)
        project.wait_resolves("ray-head", ["redis", "ray-head"], up_log)
        project.wait_resolves("ray-worker", ["redis", "ray-head"], up_log)
        phase("up", t0, "redis and ray-head healthy, ray-worker started, names resolve")

        t0 = time.monotonic()
        retried = ""
        for attempt in (1, 2):
            project.compose("up", "-d", "--no-build", "--no-deps", "submit", log=up_log)
            submit = project.container("submit")
            r = engine("wait", submit, timeout=job_timeout, check=False)
            logs = engine("logs", submit, check=False)
            out = (logs.stdout or "") + (logs.stderr or "")
            (LOGS / f"submit-{attempt}.log").write_text(out)
            code = int((r.stdout or "-1").split()[0]) if r.returncode == 0 else -1
            # aardvark-dns 1.4 (podman's DNS here) drops queries while it reloads, which it does
            # at every container start (containers/aardvark-dns#389): seen once in nine runs as
            # `redis` not resolving in the job's first contact. One more try, said out loud.
            if code != 0 and attempt == 1 and "Temporary failure in name resolution" in out:
                retried = " (second try: the first hit a DNS failure, see submit-1.log)"
                print(f"job     retry: a service name did not resolve{retried}", flush=True)
                continue
            break
        if code != 0:
            raise SmokeError(
                f"submit exited {code}; its log:\n" + "\n".join(out.splitlines()[-40:])
            )
        phase("job", t0, "ray job submit exited 0" + retried)

        t0 = time.monotonic()
        if not re.search(r"Job '\S+' succeeded", out):
            raise SmokeError("submit exited 0 but its log does not say the job succeeded")
        summary = json.loads([ln for ln in out.splitlines() if ln.startswith('{"run_dir"')][-1])
        run_dir = summary["run_dir"]
        listing = project.compose(
            "run", "--rm", "--no-deps", "-T", "submit", "find", run_dir, "-type", "f"
        ).stdout.split()
        names = {p.removeprefix(run_dir + "/") for p in listing}
        missing = [p for p in ("checkpoints/latest.safetensors", "metrics.jsonl") if p not in names]
        if missing or not any(n.startswith("adapter/") for n in names):
            raise SmokeError(f"run folder {run_dir} lacks {missing or ['adapter/']}: {names}")
        phase(
            "checks",
            t0,
            f"job succeeded; {run_dir}: checkpoint, adapter, "
            f"{summary.get('learner_steps')} learner steps",
        )
        failed = False
    finally:
        t0 = time.monotonic()
        project.dump_logs(LOGS)
        project.compose("down", "-v", "--timeout", "20", log=up_log, check=False)
        left = engine(
            "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project.name}"
        ).stdout.split()
        vols = [
            v
            for v in engine("volume", "ls", "-q").stdout.split()
            if v.startswith(project.name + "_")
        ]
        if left or vols:
            msg = f"down left containers {left} and volumes {vols}"
            if not failed:
                raise SmokeError(msg)
            print(msg, file=sys.stderr)
        phase("down", t0, "containers, network and volumes removed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", action="store_true", help="print the engine (or why none), exit")
    ap.add_argument("--job-timeout", type=float, default=900)
    args = ap.parse_args()
    engine = find_engine(install=not args.probe)
    if isinstance(engine, str):
        print(engine)
        return 3
    if args.probe:
        print(f"engine: {engine.describe()}")
        return 0
    t0 = time.monotonic()
    try:
        smoke(engine, args.job_timeout)
    except (SmokeError, subprocess.TimeoutExpired) as e:
        print(f"compose smoke FAILED: {e}", file=sys.stderr)
        return 1
    print(f"compose smoke passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
