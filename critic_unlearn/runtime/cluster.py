"""Connect to a Ray cluster (runtime.ray_address or RAY_ADDRESS, as under `ray job submit`) or,
when neither is set, start a fresh local one (`address="local"`: never the cluster that Ray's
temp folder records as the last `ray start`, which may be dead or someone else's); only a cluster
started here is shut down here.

First contact fails fast (`check_first_contact`, before a run starts anything): the model
folder, every Redis server and the Ray address are each checked in seconds, and a wrong one is a
one-line error naming the setting, its value and what to do. Retries are for what was reached
once and then lost (Redis: replay/client.py; Ray: its own GCS reconnection).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import ray

from critic_unlearn.config import RunConfig
from critic_unlearn.runtime.errors import RuntimeFailure

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 3.0  # seconds the first TCP connect to the Ray address may take
_NO_ADDRESS = "leave runtime.ray_address and RAY_ADDRESS unset to start a fresh local cluster"


@contextlib.contextmanager
def ray_cluster(cfg: RunConfig) -> Iterator[None]:
    if ray.is_initialized():  # the caller (a test, a notebook) owns the connection
        yield
        return
    found = cluster_address(cfg)
    if found and found[1] != "local":
        ray.init(address=found[1], log_to_driver=True)
    else:
        ray.init(**local_cluster_kwargs(cfg.runtime.ray_num_cpus), log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


# Ray's switch for single-node clusters (named for laptops, where it is the default): while it is
# 0, Ray keeps a node on 127.0.0.1. Without it Ray replaces 127.0.0.1 by the machine's routable
# address (services.resolve_ip_for_localhost), so `_node_ip_address="127.0.0.1"` alone would
# still put the GCS, raylet and workers on the network interface.
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_ray_on_loopback() -> None:
    """Make the local cluster started next (and the processes it starts) listen on loopback."""
    from ray._private import ray_constants

    os.environ[SINGLE_NODE_ENV] = "0"  # the raylet's workers read it when they import Ray
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray before: read at import


def local_cluster_kwargs(num_cpus: int | None) -> dict:
    """`ray.init` arguments for a fresh single-node cluster on loopback, whatever cluster Ray's
    temp folder records (`ray_current_cluster`); the runtime, the tests and the benches use it.
    Calling it keeps the cluster on loopback (`keep_ray_on_loopback`)."""
    keep_ray_on_loopback()
    return dict(
        address="local",
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
    )


def cluster_address(cfg: RunConfig) -> tuple[str, str] | None:
    """(where it was set, the address): runtime.ray_address first, then RAY_ADDRESS (which
    `ray job submit` sets for its entrypoint); None: start a local cluster."""
    if cfg.runtime.ray_address:
        return "runtime.ray_address", cfg.runtime.ray_address
    env = os.environ.get("RAY_ADDRESS")
    return ("RAY_ADDRESS", env) if env else None


def check_first_contact(cfg: RunConfig) -> None:
    """The model folder, the Redis servers, the Ray address (unless this process is already
    connected): each wrong one fails in seconds with one line. `train_ray` calls it before
    anything else (critic pretraining, Ray): a wrong Ray address would otherwise hang for
    minutes, and an unreachable Redis would only be found after pretraining and Ray's start."""
    from critic_unlearn.diffusion.loading import check_model_source

    check_model_source(cfg.model.pretrained)  # ModelLoadError: the CLI prints it as one line
    check_redis_reachable(cfg)
    found = None if ray.is_initialized() else cluster_address(cfg)
    if found:
        check_ray_address(*found)


def check_redis_reachable(cfg: RunConfig) -> None:
    """Ping replay.url and every replay.shards URL once (no retries: see replay/client.py), and
    check the ACL user's grants when replay.namespace is set. A wrong setting (not a Redis URL,
    an unset password variable, a missing TLS file) is a RuntimeFailure; an unreachable server
    or refused credentials stay the replay's own one-line errors (ReplayError)."""
    from critic_unlearn.replay import check_reachable

    if cfg.replay.url == "auto":
        return
    try:
        check_reachable(cfg.replay)
    except ValueError as e:
        raise RuntimeFailure(str(e)) from None


def check_ray_address(field: str, address: str) -> None:
    """Something must listen at the address (one TCP connect, CONNECT_TIMEOUT_S at most)."""
    if address == "local":
        return
    if address.startswith(("http://", "https://")):
        raise RuntimeFailure(
            f"{field} = {address!r} is an HTTP address (the Jobs API, for `ray job submit "
            "--address`); a driver needs the cluster's GCS address HOST:PORT (`ray start "
            f"--head --port`, 6379 by default): fix {field}, or {_NO_ADDRESS}"
        )
    target = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            target = canonicalize_bootstrap_address("auto") or ""
        except ConnectionError:
            target = ""
        if not target:
            raise RuntimeFailure(
                f"{field} = 'auto' found no Ray cluster started with `ray start` on this node; "
                f"start one, or set {field} to HOST:PORT, or {_NO_ADDRESS}"
            )
    host, _, port = target.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise RuntimeFailure(
            f"{field} = {address!r} is not a Ray address; use HOST:PORT (the head's GCS port, "
            f"6379 by default) or ray://HOST:PORT, or {_NO_ADDRESS}"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        what = address if target == address else f"{address} -> {target}"
        raise RuntimeFailure(
            f"no Ray cluster answers at {field} = {what!r} ({e.strerror or type(e).__name__}); "
            f"start it (`ray start --head`) or fix {field}, or {_NO_ADDRESS}"
        ) from None


def check_replay_reachable(cfg: RunConfig, auto: bool) -> None:
    """replay.url = auto starts Redis on this node at 127.0.0.1: fine for one node only."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if auto and len(nodes) > 1:
        raise RuntimeFailure(
            f"replay.url = 'auto' starts a private Redis on the driver's node at 127.0.0.1, "
            f"which the other {len(nodes) - 1} node(s) of this cluster cannot reach; set "
            "replay.url to a Redis server every node can reach (redis://host:port/0)"
        )


def quiet_worker_logging() -> None:
    """In a worker: our INFO lines, everyone else's warnings only (open_clip, diffusers and
    transformers narrate every model load at INFO, once per actor)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("critic_unlearn").setLevel(logging.INFO)
