"""Run folders on shared storage (runtime.run_dir as a URL): a tiny local run against a real
S3-compatible server started here (moto's server mode, on a free loopback port) and on a file://
URL. Every run file reaches the store whole, and a rerun from an empty staging folder (another
node) resumes from the remote checkpoint. Also RunStore's own rules without training: what a push
sends and in which order, what a pull leaves, what a failing store does, and the config's errors.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from critic_unlearn.config import ConfigError, load_config
from critic_unlearn.learner.checkpoint import unpack_state
from critic_unlearn.runtime.local import train_local
from critic_unlearn.training.loop import CHECKPOINT
from critic_unlearn.training.setup import prepare_run_dir
from critic_unlearn.training.storage import RunStore, StorageError
from tests.integration.test_local_trainer import config as tiny_config


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), with dummy credentials in the environment
    (where s3fs reads them) and no user AWS config; stopped after the module."""
    from moto.server import ThreadedMotoServer

    empty = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(empty),
            "AWS_SHARED_CREDENTIALS_FILE": str(empty),
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def s3_options(endpoint: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}}


@pytest.fixture(params=["s3", "file"])
def store_url(request, tmp_path: Path) -> tuple[str, dict]:
    """(runtime.run_dir, runtime.storage_options) of an empty remote folder."""
    if request.param == "file":
        return f"file://{tmp_path / 'shared' / 'runs'}", {}
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"runs-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True, **s3_options(endpoint)).mkdir(bucket)
    return f"s3://{bucket}/team/runs", s3_options(endpoint)


def remote_fs(url: str, options: dict):
    fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
    return fs, root.rstrip("/")


def put_remote(url: str, options: dict, files: dict[str, bytes]) -> None:
    fs, root = remote_fs(url, options)
    for rel, data in files.items():
        fs.makedirs(f"{root}/{rel}".rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(f"{root}/{rel}", data)


def remote_files(url: str, options: dict) -> dict[str, bytes]:
    fs, root = remote_fs(url, options)
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


def overrides(url: str, options: dict, staging: Path) -> list[str]:
    return [
        f"runtime.run_dir={url}",
        f"runtime.storage_options={json.dumps(options)}",
        f"runtime.staging_dir={staging}",
    ]


# -- a real run ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_is_stored_remotely_and_resumes_on_another_node(
    store_url, tiny_model_dir, clip_dir, tmp_path
):
    url, options = store_url
    node1 = overrides(url, options, tmp_path / "node1")
    r = train_local(tiny_config(tiny_model_dir, clip_dir, url, *node1))
    assert r.version == 3 and r.learner_steps == 4
    assert r.run_dir.is_relative_to(tmp_path / "node1")  # the staging copy, not the store

    files = remote_files(f"{url}/t", options)
    expected = {
        "config.yaml", "metrics.jsonl", "runtime.json", CHECKPOINT,
        "adapter/adapter.safetensors", "adapter/snapshots/step_000002.safetensors",
        "adapter/snapshots/step_000004.safetensors", "plots/reward.png",
    }
    assert expected <= set(files), sorted(expected - set(files))
    assert any(name.startswith("tb/") for name in files)
    assert not [name for name in files if ".tmp-" in name]  # only whole files, by final names
    # each remote file is the staging copy's final state, byte for byte
    for name in expected - {"runtime.json"}:
        assert files[name] == (r.run_dir / name).read_bytes(), name
    state = unpack_state(files[CHECKPOINT])  # decodes whole: checksum checked
    assert state["learner"]["version"] == 3 and state["trajectories"] == r.trajectories
    steps = [json.loads(line)["step"] for line in files["metrics.jsonl"].decode().splitlines()]
    assert steps == [1, 2, 3, 4]

    # another node: an empty staging folder, the same command with a larger budget
    node2 = overrides(url, options, tmp_path / "node2")
    more = train_local(
        tiny_config(tiny_model_dir, clip_dir, url, *node2, "learner.max_steps=4")
    )
    assert more.run_dir.is_relative_to(tmp_path / "node2")
    assert more.version == 4 and more.learner_steps == 5  # resumed: the version continues
    assert more.trajectories > r.trajectories
    files = remote_files(f"{url}/t", options)
    assert unpack_state(files[CHECKPOINT])["learner"]["version"] == 4
    steps = [json.loads(line)["step"] for line in files["metrics.jsonl"].decode().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # node 1's rows came down, each step logged once
    snaps = sorted(n for n in files if n.startswith("adapter/snapshots/"))
    assert [n[-18:-12] for n in snaps] == ["000002", "000004", "000005"]


# -- RunStore without training --------------------------------------------------------------------
def staged(folder: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def test_push_sends_what_changed_with_the_checkpoint_last(store_url, tmp_path):
    url, options = store_url
    local = staged(tmp_path / "stage" / "run1", {
        CHECKPOINT: "ckpt", "adapter/snapshots/step_000002.safetensors": "snap",
        "metrics.jsonl": "{}\n", "config.yaml": "a: 1\n", ".runtime.json.tmp-1": "half",
    })
    store = RunStore(local, f"{url}/run1", options)
    sent = store.push()
    assert sorted(sent) == sorted([
        CHECKPOINT, "adapter/snapshots/step_000002.safetensors", "metrics.jsonl", "config.yaml",
    ])
    assert sent[-1] == CHECKPOINT  # a remote checkpoint never refers to a missing snapshot
    assert store.push() == []  # nothing changed
    with open(local / "metrics.jsonl", "a") as f:
        f.write('{"step": 1}\n')
    (local / CHECKPOINT).write_text("ckpt2")
    staged(local, {"adapter/snapshots/step_000004.safetensors": "snap4"})
    assert store.push() == [
        "adapter/snapshots/step_000004.safetensors", "metrics.jsonl", CHECKPOINT,
    ]
    files = remote_files(f"{url}/run1", options)
    assert files["metrics.jsonl"] == b'{}\n{"step": 1}\n' and files[CHECKPOINT] == b"ckpt2"
    assert not [n for n in files if ".tmp-" in n]


def test_pull_makes_the_staging_folder_equal_to_the_remote_run(store_url, tmp_path):
    url, options = store_url
    put_remote(f"{url}/run2", options, {
        CHECKPOINT: b"remote ckpt", "metrics.jsonl": b"{}\n",
        "adapter/.adapter.safetensors.tmp-9": b"torn",
    })
    local = staged(tmp_path / "stage" / "run2", {
        CHECKPOINT: "older local ckpt", "adapter/snapshots/step_000008.safetensors": "lost",
    })
    store = RunStore(local, f"{url}/run2", options)
    assert store.pull() == [CHECKPOINT, "metrics.jsonl"]
    assert (local / CHECKPOINT).read_bytes() == b"remote ckpt"
    assert not (local / "adapter/snapshots/step_000008.safetensors").exists()
    assert not list(local.rglob("*.tmp-*"))
    assert store.push() == []  # what came down is not sent back up...
    assert RunStore(local, f"{url}/run2", options).push() == []  # ...by the loop's store either
    # nothing stored yet: an earlier attempt on this node that never pushed is kept and sent
    earlier = staged(tmp_path / "stage" / "run3", {CHECKPOINT: "unpushed", ".pushed.json": "{"})
    assert RunStore(earlier, f"{url}/run3", options).pull() == []
    assert (earlier / CHECKPOINT).read_text() == "unpushed"
    assert RunStore(earlier, f"{url}/run3", options).push() == [CHECKPOINT]
    assert remote_files(f"{url}/run3", options) == {CHECKPOINT: b"unpushed"}


def test_prepare_run_dir_stages_a_url_run_and_keeps_local_paths(store_url, tmp_path):
    url, options = store_url
    put_remote(f"{url}/named", options, {CHECKPOINT: b"from the first node"})
    staging = overrides(url, options, tmp_path / "cache")
    cfg = load_config(None, [*staging, "runtime.run_name=named"])
    run_dir = prepare_run_dir(cfg)
    assert run_dir.name == "named" and run_dir.is_relative_to(tmp_path / "cache")
    assert (run_dir / CHECKPOINT).read_bytes() == b"from the first node"
    assert load_config(run_dir / "config.yaml", []).runtime.run_dir == url

    local = load_config(None, [f"runtime.run_dir={tmp_path / 'runs'}", "runtime.run_name=x"])
    assert prepare_run_dir(local) == tmp_path / "runs" / "x"
    assert RunStore.for_run(local, tmp_path / "runs" / "x").push(final=True) == []


def test_a_failing_store_is_retried_during_the_run_and_stops_its_end(s3_endpoint, tmp_path):
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    local = staged(tmp_path / "stage" / "r", {CHECKPOINT: "ckpt", "metrics.jsonl": "{}\n"})
    store = RunStore(local, "s3://no-such-bucket-here/runs/r", options)
    assert store.push() == []  # logged; nothing is marked as sent
    with pytest.raises(StorageError, match=f"the run is whole in {local}"):
        store.push(final=True)
    fsspec.filesystem("s3", skip_instance_cache=True, **options).mkdir("no-such-bucket-here")
    assert sorted(store.push(final=True)) == [CHECKPOINT, "metrics.jsonl"]  # retried


# -- the setting --------------------------------------------------------------------------------
@pytest.mark.parametrize("value, words", [
    ("http://example.com/runs", "http:// cannot hold a run folder"),
    ("s3:///runs", "names no bucket or host; write s3://BUCKET/PREFIX"),
    ("file://runs", "a file:// URL needs an absolute path"),
])
def test_run_dir_urls_that_cannot_hold_a_run_are_refused(value, words):
    with pytest.raises(ConfigError, match="runtime.run_dir = ") as e:
        load_config(None, [f"runtime.run_dir={value}"])
    assert words in str(e.value) and value in str(e.value)


def test_local_run_dirs_stay_paths():
    assert load_config(None, ["runtime.run_dir=/data/runs"]).runtime.run_dir == "/data/runs"
    assert load_config(None, []).runtime.run_dir == "runs"


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_a_store_whose_package_is_missing_is_named(tmp_path):
    with pytest.raises(StorageError, match="runtime.run_dir = 'gs://bucket/runs/r' needs"):
        RunStore(tmp_path, "gs://bucket/runs/r", {})
