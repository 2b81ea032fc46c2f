"""Weight broadcast: median time from `publish` to "applied" on every actor, for 1, 2 and 4 actors.

The adapter is SD-1.5's: rank 4 LoRA on to_q/to_k/to_v/to_out.0 of every attention layer, 256
tensors, 3.19 MB in float32. The path is the runtime's own: a publisher actor runs
`RayPublisher.publish` (encode + checksum, one `ray.put`, the durable copy to a private Redis),
the driver calls `ActorPool.broadcast` (one `set_weights` per actor), and each `ActorWorker`
fetches the blob, checks codec checksum and manifest, and loads the tensors into its LoRA layers
through the real `Actor.apply_weights`. The actors hold only the LoRA-carrying attention layers
of SD-1.5 (base weights on the meta device, which applying an adapter never reads), so four of
them fit on a laptop; the actors are idle, so "applied" is not delayed by a batch in progress.

    python -m bench.micro.weight_broadcast   # last line: {"p50_ms": {"1": .., "2": .., "4": ..}}
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ray
import torch
from torch import nn

from bench.harness import emit
from critic_unlearn.actors.actor import Actor
from critic_unlearn.config import RunConfig, load_config
from critic_unlearn.diffusion.loading import SDComponents
from critic_unlearn.diffusion.lora import (
    ADAPTER,
    adapter_manifest,
    get_adapter_state,
    lora_config_hash,
    peft_config,
)
from critic_unlearn.replay import RedisServer, WeightStore
from critic_unlearn.runtime.cluster import local_cluster_kwargs
from critic_unlearn.runtime.supervisor import ActorPool
from critic_unlearn.runtime.weights import RayPublisher
from critic_unlearn.types import WeightsPacket

MODEL_ID = "sd15-shaped-lora-skeleton"


def sd15_lora_skeleton(cfg: RunConfig) -> nn.Module:
    """SD-1.5's attention projections (as named in its UNet) with this run's LoRA attached."""
    from diffusers import UNet2DConditionModel
    from peft import inject_adapter_in_model

    with torch.device("meta"):  # SD-1.5's UNet layout, no memory
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    targets = tuple(cfg.lora.target_modules)
    root = nn.Module()
    for name, m in unet.named_modules():
        if not (isinstance(m, nn.Linear) and any(name.endswith("." + t) for t in targets)):
            continue
        node, parts = root, name.split(".")
        for p in parts[:-1]:
            if p not in node._modules:
                node.add_module(p, nn.Module())
            node = node._modules[p]
        layer = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        node.add_module(parts[-1], layer)
    inject_adapter_in_model(peft_config(cfg.lora), root, adapter_name=ADAPTER)
    for name, mod in root.named_modules():
        if name.endswith((f"lora_A.{ADAPTER}", f"lora_B.{ADAPTER}")):
            mod.to_empty(device="cpu")
    root.device = torch.device("cpu")  # what SDComponents.device reads
    return root


def skeleton_actor(cfg: RunConfig, actor_id: int) -> Actor:
    """A real Actor whose model is the skeleton (it only ever applies weights here)."""
    parts = SDComponents(sd15_lora_skeleton(cfg), None, None, None, None, MODEL_ID)
    return Actor(cfg, actor_id, parts, reward=None, prompts=None)


class Publisher:
    """Stands where the learner stands: makes version v of the adapter and publishes it."""

    def __init__(self, cfg: RunConfig, namespace: str) -> None:
        torch.set_num_threads(1)
        self.cfg = cfg
        self.shapes = {k: v.shape for k, v in get_adapter_state(sd15_lora_skeleton(cfg)).items()}
        self.publisher = RayPublisher(WeightStore(cfg.replay, namespace))

    def publish(self, version: int):
        g = torch.Generator().manual_seed(version)
        state = {k: torch.randn(s, generator=g) * 1e-3 for k, s in self.shapes.items()}
        manifest = adapter_manifest(MODEL_ID, lora_config_hash(self.cfg.lora), state, version)
        self.publisher.publish(WeightsPacket(version, state, manifest))
        return self.publisher.take_new()

    def megabytes(self) -> float:
        return sum(torch.Size(s).numel() * 4 for s in self.shapes.values()) / 1e6


def measure(cfg: RunConfig, publisher, n: int, rounds: int, version0: int) -> list[float]:
    pool = ActorPool(cfg, f"bench-bcast-{n}", n, factory=skeleton_actor)
    ray.get([s.handle.start.remote() for s in pool.slots.values()])
    times, parts = [], []
    for i in range(rounds):
        published = ray.get(publisher.publish.remote(version0 + i))
        acks = ray.get(pool.broadcast([published.ref], published.version))
        done = time.time()
        assert all(a["applied"] and a["version"] == published.version for a in acks), acks
        times.append((done - published.started) * 1e3)
        slowest = max(acks, key=lambda a: a["fetch_ms"] + a["decode_ms"] + a["apply_ms"])
        parts.append(
            (
                published.encode_ms,
                published.put_ms,
                published.store_ms,
                slowest["fetch_ms"],
                slowest["decode_ms"],
                slowest["apply_ms"],
            )
        )
    pool.inflight.clear()
    pool.stop()
    return times, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster
    with RedisServer() as redis:
        cfg = load_config(
            None,
            [
                f"replay.url={redis.url}",
                "runtime.num_threads=1",
                "actors.cpus_per_actor=0.25",
                "replay.namespace=bench",
            ],
        )
        ray.init(**local_cluster_kwargs(2), log_to_driver=False)  # fresh, never a recorded one
        try:
            publisher = ray.remote(Publisher).options(num_cpus=0.25).remote(cfg, "bench-pub")
            mb = ray.get(publisher.megabytes.remote())
            p50, detail = {}, {}
            for n in (1, 2, 4):
                times, parts = measure(cfg, publisher, n, args.warmup + args.rounds, 1000 * n)
                times, parts = times[args.warmup :], parts[args.warmup :]
                p50[str(n)] = round(statistics.median(times), 1)
                med = [round(statistics.median(x), 1) for x in zip(*parts, strict=True)]
                names = ("encode_ms", "put_ms", "redis_ms", "fetch_ms", "decode_ms", "apply_ms")
                detail[str(n)] = {
                    "p90_ms": round(sorted(times)[int(0.9 * len(times))], 1),
                    **dict(zip(names, med, strict=True)),
                }
                print(
                    f"{n} actor(s): p50 {p50[str(n)]} ms, p90 {detail[str(n)]['p90_ms']} ms over "
                    f"{len(times)} versions of {mb:.2f} MB; medians: publisher encode+checksum "
                    f"{med[0]} ms, ray.put {med[1]} ms, Redis copy {med[2]} ms; slowest actor "
                    f"fetch {med[3]} ms, decode {med[4]} ms, check+apply {med[5]} ms",
                    flush=True,
                )
        finally:
            ray.shutdown()
    emit({"p50_ms": p50, "adapter_mb": round(mb, 2), "rounds": args.rounds, "detail": detail})


if __name__ == "__main__":
    main()
