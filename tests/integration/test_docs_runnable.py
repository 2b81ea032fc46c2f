"""Docs that cannot rot: every shell block of the files in DOCS (README.md, deploy/README.md,
docs/benchmarks.md, docs/results.md) is run here verbatim, or marked in the Markdown as not
runnable here, with the reason.

How a block is covered (see tests/integration/_doc_blocks.py):
  * an HTML comment right before its fence, `<!-- runnable: test_docs_runnable::test_NAME -->`
    (the test below that runs it) or `<!-- not-runnable: REASON -->` (REASON starts with
    "needs ..." or "long: ...");
  * its hash in REGISTRY below, with the same verdict. A new or edited block has a hash that is
    not there, and `test_every_shell_block_is_run_or_marked` fails, saying what to do: run the
    block's test (or review the not-runnable reason) and register the new hash.

A runnable block runs as written, under `bash -e`, with only the placeholders of PLACEHOLDERS
replaced (as whole words: TOKEN does not touch RAY_AUTH_TOKEN). The tests choose where it runs
(the working directory) and its environment: this checkout's .venv/bin first on PATH (a user's
activated venv), no RAY_* variables inherited, HF_HUB_OFFLINE=1 (no network here).

The Ray blocks share one `ray start --head` (module-scoped, token auth on, every port a free one
on 127.0.0.1, Ray's temp folder a private one, stopped by the PID this test holds); Redis is a
private redis-server on a free port, never the machine's 6379.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from critic_unlearn.config import dump_config
from critic_unlearn.replay import RedisServer
from critic_unlearn.replay.server import find_server_binary
from tests._tiny_run import tiny_run_config
from tests.integration._doc_blocks import (
    Block,
    extract_blocks,
    run_shell,
    start_shell,
    substitute,
    unknown_placeholders,
)
from tests.integration.test_runtime_cluster import Head
from tests.integration.test_runtime_local import runtime_overrides

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCS = ("README.md", "deploy/README.md", "docs/benchmarks.md", "docs/results.md")
MODULE = Path(__file__).stem

# The one placeholder table: what each placeholder of the docs means, and what the tests put in
# its place. Host:port placeholders carry the default port in the docs; the tests' servers
# listen on free ports instead (the machine's own 6379 and 8265 are never touched).
PLACEHOLDERS: dict[str, str] = {
    "HEAD_HOST:8265": "the Ray head's dashboard (Jobs API) -> 127.0.0.1:<the test head's port>",
    "TOKEN": "the Ray head's auth token -> the random token the test head was started with",
    "REDIS_HOST:6379": "the replay Redis -> 127.0.0.1:<the test's private redis-server port>",
    "PATH_OR_HUB_ID": "a model -> the tiny random SD folder the tests build (offline: no hub)",
    "CONFIG": "a scenario YAML -> a tiny scenario the test writes (tiny SD, tiny CLIP, "
    "2 learner steps, replay.url=auto)",
    "[overrides ...]": "KEY=VALUE overrides -> runtime.run_name=docs-local",
}

NOT_RUNNABLE = "not-runnable"
# (file, block hash) -> the test that runs the block, or NOT_RUNNABLE (its marker says why)
REGISTRY: dict[tuple[str, str], str] = {
    ("README.md", "8724bf361e971161"): NOT_RUNNABLE,  # make demo / make test
    ("README.md", "9de94bee1014d834"): NOT_RUNNABLE,  # SD-1.5 train, eval, export (GPUs)
    ("README.md", "e7f46d675cab7723"): NOT_RUNNABLE,  # SD-1.5 ray job submit (a GPU cluster)
    ("README.md", "be6a9b2e97f78cb3"): "test_readme_train_local",
    ("README.md", "5d5a3a25960c58b5"): "test_readme_first_look",
    ("README.md", "f5047309410a9610"): NOT_RUNNABLE,  # critic pretrain + full toy train
    ("docs/benchmarks.md", "578f1ce3f34b50e2"): NOT_RUNNABLE,  # the benches
    ("deploy/README.md", "1696fc53c8ca6763"): NOT_RUNNABLE,  # docker build
    ("deploy/README.md", "08d8337788c644d4"): "test_deploy_way1_ray_job_submit",
    ("deploy/README.md", "bf927b0ce5aa418e"): NOT_RUNNABLE,  # KubeRay: helm, docker, kubectl
    ("deploy/README.md", "44ee136c790cb68a"): NOT_RUNNABLE,  # KubeRay logs
    ("deploy/README.md", "6bbf4d3e35a60685"): NOT_RUNNABLE,  # KubeRay long-lived cluster
    ("deploy/README.md", "8d6ec2f982b995aa"): NOT_RUNNABLE,  # docker compose up
    ("deploy/README.md", "f27b515781661b13"): NOT_RUNNABLE,  # compose + host submit
    ("deploy/README.md", "3e4b2c8935fa875b"): NOT_RUNNABLE,  # make compose-smoke (container test)
}
REASON_PREFIXES = ("needs ", "long: ")


def all_blocks() -> list[Block]:
    return [b for rel in DOCS for b in extract_blocks(REPO, rel)]


def the_block(test_name: str) -> Block:
    """The one block whose marker names `test_name`."""
    found = [
        b
        for b in all_blocks()
        if b.marker == "runnable" and b.marker_value == f"{MODULE}::{test_name}"
    ]
    assert len(found) == 1, f"{len(found)} blocks are marked as run by {MODULE}::{test_name}"
    return found[0]


def script(block: Block, values: Mapping[str, str]) -> str:
    """The block's text with the placeholders of the table replaced, and nothing else."""
    extra = set(values) - set(PLACEHOLDERS)
    assert not extra, f"not in the documented PLACEHOLDERS table: {sorted(extra)}"
    text = substitute(block.text, values)
    left = unknown_placeholders(text, PLACEHOLDERS)
    assert not left, f"{block.where}: placeholders left without a value: {left}"
    return text


def block_env(**extra: str) -> dict[str, str]:
    """A user's shell with this checkout's venv activated: no RAY_* settings of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **extra
    )
    return env


def sandbox(root: Path) -> Path:
    """A working directory that looks like the checkout to relative paths (.venv/, configs/)
    but keeps what a block writes (runs/, .cache/) out of it."""
    root.mkdir(parents=True, exist_ok=True)
    for name in (".venv", "configs"):
        (root / name).symlink_to(REPO / name)
    return root


# ---------------------------------------------------------------------------------------------
# Coverage: fast, no subprocess


def test_every_shell_block_is_run_or_marked():
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    tests_here = {name for name in globals() if name.startswith("test_")}
    for b in all_blocks():
        if not b.lang:
            problems.append(
                f"{b.where}: a fence without a language: label it (```bash for "
                "commands, ```text for a diagram or output)"
            )
            continue
        if not b.is_shell:
            continue
        key = (b.path, b.digest)
        seen.add(key)
        if b.marker is None:
            problems.append(
                f"{b.where}: a shell block without a marker. Put on the line before its fence "
                f"`<!-- runnable: {MODULE}::test_NAME -->` and write test_NAME here to run it "
                "(placeholders only from PLACEHOLDERS), or `<!-- not-runnable: needs ... -->` "
                "/ `<!-- not-runnable: long: N minutes ... -->`; then add "
                f"REGISTRY[({b.path!r}, {b.digest!r})]"
            )
            continue
        if b.marker == "runnable":
            module, _, test = b.marker_value.partition("::")
            if module != MODULE or test not in tests_here:
                problems.append(
                    f"{b.where}: marked as run by {b.marker_value!r}, which is not a "
                    f"test of {MODULE}.py"
                )
                continue
            verdict = test
        else:
            if not b.marker_value.startswith(REASON_PREFIXES):
                problems.append(
                    f"{b.where}: a not-runnable reason must start with one of "
                    f"{REASON_PREFIXES}: {b.marker_value!r}"
                )
            verdict = NOT_RUNNABLE
        registered = REGISTRY.get(key)
        if registered is None:
            if verdict == NOT_RUNNABLE:
                todo = (
                    "check that its not-runnable reason still holds (or make it runnable), "
                    f"then set REGISTRY[({b.path!r}, {b.digest!r})] = NOT_RUNNABLE"
                )
            else:
                todo = (
                    f"run it: pytest tests/integration/{MODULE}.py::{verdict} must pass, "
                    f"then set REGISTRY[({b.path!r}, {b.digest!r})] = {verdict!r}"
                )
            problems.append(
                f"{b.where}: this shell block is new or changed (hash {b.digest}, "
                f"marked {b.marker}): {todo}; drop the entry of its old hash"
            )
        elif registered != verdict:
            problems.append(
                f"{b.where}: its marker says {verdict!r}, REGISTRY says "
                f"{registered!r}: make them agree"
            )
    stale = sorted(set(REGISTRY) - seen)
    if stale:
        problems.append(f"REGISTRY entries of blocks that no longer exist (remove them): {stale}")
    assert not problems, "\n".join(problems)


def test_block_helpers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "intro\n\n<!-- not-runnable: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
        "````text\n```\nnested\n```\n````\n\n~~~sh\necho $RAY_AUTH_TOKEN TOKEN\n~~~\n"
    )
    gpu, nested, echo = extract_blocks(tmp_path, "doc.md")
    assert (gpu.line, gpu.lang, gpu.text, gpu.marker, gpu.marker_value) == (
        4,
        "bash",
        "nvidia-smi\n",
        "not-runnable",
        "needs a GPU",
    )
    assert (nested.lang, nested.text, nested.marker) == ("text", "```\nnested\n```\n", None)
    assert not nested.is_shell and echo.is_shell
    assert substitute(echo.text, {"TOKEN": "t0k"}) == "echo $RAY_AUTH_TOKEN t0k\n"
    assert unknown_placeholders(echo.text, {"TOKEN": ""}) == ["TOKEN"]
    assert unknown_placeholders(echo.text, {"AUTH": ""}) == []
    rc, out = run_shell(
        "echo one\nfalse\necho two\n", cwd=tmp_path, env=block_env(), log_dir=tmp_path, timeout_s=30
    )
    assert rc == 1 and out == "one\n"  # bash -e: the first failing command fails the block


# ---------------------------------------------------------------------------------------------
# README.md


@pytest.mark.slow
def test_readme_first_look(tiny_model_dir, tmp_path):
    """--help, toyworld info, sample (the tiny model for PATH_OR_HUB_ID), config show."""
    block = the_block("test_readme_first_look")
    cwd = sandbox(tmp_path / "cwd")
    rc, out = run_shell(
        script(block, {"PATH_OR_HUB_ID": str(tiny_model_dir)}),
        cwd=cwd,
        env=block_env(),
        log_dir=tmp_path,
        timeout_s=300,
    )
    assert rc == 0, out[-4000:]
    assert "Usage:" in out and "toyworld" in out and "lr: 3.0e-05" in out, out[-4000:]
    grid = cwd / "runs/s/grid.png"
    assert grid.exists() and len(list((cwd / "runs/s/trajectories").glob("*.safetensors"))) == 8


@pytest.mark.slow
def test_readme_train_local(tiny_model_dir, clip_dir, tmp_path):
    """`train CONFIG runtime.kind=local [overrides ...]` on a tiny scenario, Redis: auto."""
    if not find_server_binary_or_none():
        pytest.skip("needs redis-server (replay.url=auto)")
    cfg = tiny_run_config(
        tiny_model_dir,
        clip_dir,
        tmp_path / "runs",
        *runtime_overrides("auto", "learner.max_steps=2"),
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(dump_config(cfg))
    block = the_block("test_readme_train_local")
    cwd = sandbox(tmp_path / "cwd")
    values = {"CONFIG": str(config), "[overrides ...]": "runtime.run_name=docs-local"}
    rc, out = run_shell(
        script(block, values), cwd=cwd, env=block_env(), log_dir=tmp_path, timeout_s=300
    )
    assert rc == 0, out[-4000:]
    run_dir = tmp_path / "runs/docs-local"
    assert f"run folder: {run_dir}" in out, out[-4000:]
    assert (run_dir / "adapter/adapter.safetensors").exists(), out[-4000:]


def find_server_binary_or_none() -> str | None:
    try:
        return str(find_server_binary())
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# deploy/README.md: the Ray blocks, on one shared head


@pytest.fixture(scope="module")
def head_env() -> dict[str, str]:
    """The head's side: token auth on, the token in the environment (nothing in ~/.ray)."""
    return block_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))


@pytest.fixture(scope="module")
def docs_head(head_env) -> Iterator[Head]:
    """One `ray start --head` for every Ray block of the docs."""
    h = Head(head_env)
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()


@pytest.fixture
def docs_redis() -> Iterator[RedisServer]:
    if not find_server_binary_or_none():
        pytest.skip("needs redis-server")
    server = RedisServer().start()
    yield server
    server.close()


JOB_ID = re.compile(r"Job '([^']+)' submitted successfully")
LEARNER_STEP = re.compile(r"progress: step ([1-9]\d*)/")


@pytest.mark.slow
def test_deploy_way1_ray_job_submit(docs_head, head_env, docs_redis, tmp_path):
    """Way 1 as a user types it, against a `ray start` head with token auth: the job is accepted,
    starts the toy scenario (critic pretraining from `critic.init: auto`, then learner steps),
    and says where its run folder is. The scenario's 150 learner steps take ~12 minutes here, so
    the test stops the job (`ray job stop`) once the first learner step is logged."""
    # what the README said before: the token without RAY_AUTH_MODE=token is not sent
    token_only = block_env(RAY_AUTH_TOKEN=head_env["RAY_AUTH_TOKEN"])
    before = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", docs_head.dashboard],
        env=token_only,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert before.returncode != 0 and "RAY_AUTH_MODE" in before.stdout + before.stderr

    block = the_block("test_deploy_way1_ray_job_submit")
    values = {
        "HEAD_HOST:8265": docs_head.dashboard.removeprefix("http://"),
        "TOKEN": head_env["RAY_AUTH_TOKEN"],
        "REDIS_HOST:6379": f"127.0.0.1:{docs_redis.port}",
    }
    run = start_shell(script(block, values), cwd=REPO, env=block_env(), log_dir=tmp_path)
    job_id = None
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline and run.proc.poll() is None:
            out = run.output()
            if job_id is None and (m := JOB_ID.search(out)):
                job_id = m[1]
            if LEARNER_STEP.search(out):
                break
            time.sleep(1)
        out = run.output()
        assert job_id is not None, out[-4000:] + docs_head.tail()
        assert LEARNER_STEP.search(out), (
            f"no learner step logged (exit {run.proc.poll()}):\n{out[-4000:]}"
        )
    finally:
        if job_id is not None and run.proc.poll() is None:
            subprocess.run(
                [str(BIN / "ray"), "job", "stop", "--address", docs_head.dashboard, job_id],
                env=head_env,
                capture_output=True,
                timeout=120,
            )
            try:
                run.wait(60)
            except subprocess.TimeoutExpired:
                pass
        run.kill()
    assert "Authentication required" not in out
    lines = out.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if ln.startswith("Running entrypoint for job")), None
    )
    assert start is not None and start + 1 < len(lines), out[-4000:]
    folder = lines[start + 1]  # the driver's first line
    assert folder.startswith("run folder: "), out[-4000:]
    # a relative runtime.run_dir under --working-dir: inside Ray's copy, and the line says so
    assert folder.startswith("run folder: /") and "which Ray may delete" in folder, folder
