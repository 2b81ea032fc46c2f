"""Data-parallel learner workers: what N ranks share so that they take one optimiser step.

Each rank holds `learner.batch_size / N` trajectories of the global batch. Four things cross
ranks, all through torch.distributed collectives (gloo on CPUs, NCCL on GPUs), never pickled:
  - gradients: the LoRA and critic gradients are averaged (one flat all-reduce per update), so
    every rank applies the same clipped step and the adapters stay bit-identical;
  - the batch's statistics: rewards, prompts and ids enter every rank's per-prompt tracker in
    rank order, and advantages are normalised over the global batch, so a rank's advantages are
    the rows of what one learner would compute on the whole batch;
  - small per-step tensors (diagnostics, metrics, RNG states for the checkpoint);
  - the initial weights, broadcast from rank 0 when the group forms.
`Solo` is the one-rank group: the same calls, no communication, so the learner has no branches.

`form_group` joins torch.distributed's default group the way Ray Train's TorchConfig does (a
TCP rendezvous at rank 0's address and a free port; gloo on CPUs, NCCL on GPUs); the runtime
(runtime/learner_group.py) only tells every rank that address, its rank and the world size.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor


def free_port(host: str) -> int:
    """A TCP port free on `host` now (rank 0 asks, then tells the others)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def form_group(address: str, port: int, rank: int, world: int, backend: str | None = None,
               timeout_s: float = 900.0) -> DataParallel:
    """Join the default process group at tcp://address:port as `rank` of `world`; backend
    None: NCCL when this process sees a GPU, else gloo. On a loopback address gloo is kept on
    the loopback interface (its default is the interface of the host name)."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "gloo" and address.startswith("127."):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if backend == "nccl":
        torch.cuda.set_device(0)  # Ray gives each worker its own GPU(s) as device 0
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    return DataParallel()


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Solo:
    """One learner: every collective is the identity."""

    rank, world = 0, 1

    def average_gradients(self, params: Iterable[Tensor]) -> None:
        """Nothing to average with one rank."""

    def gather_rows(self, t: Tensor) -> Tensor:
        return t

    def gather_strings(self, items: list[str]) -> list[str]:
        return list(items)

    def mean_scalars(self, metrics: dict[str, float]) -> dict[str, float]:
        return metrics

    def min_int(self, value: int) -> int:
        return value

    def all_true(self, flag: bool) -> bool:
        return flag

    def broadcast_params(self, params: Iterable[Tensor]) -> None:
        """Nothing to copy with one rank."""

    def own_rows(self, t: Tensor) -> Tensor:
        return t


class DataParallel(Solo):
    """The ranks of torch.distributed's default group (initialised by the caller)."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "DataParallel needs torch.distributed initialised; form the group first "
                "(runtime/learner_group.py does it for learner.num_workers > 1)"
            )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # NCCL moves CUDA tensors only; gloo moves CPU ones
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")

    def average_gradients(self, params: Iterable[Tensor]) -> None:
        """grad <- mean over ranks, for every parameter (a missing grad counts as zeros, so all
        ranks send buffers of one shape), in one flat all-reduce."""
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1).to(self.device, torch.float32) for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def gather_rows(self, t: Tensor) -> Tensor:
        """Every rank's `t` (same shape on every rank) concatenated along dim 0, rank order."""
        src = t.detach().to(self.device).contiguous()
        parts = [torch.empty_like(src) for _ in range(self.world)]
        dist.all_gather(parts, src)
        return torch.cat(parts).to(t.device)

    def gather_strings(self, items: list[str]) -> list[str]:
        """Every rank's strings, rank order: JSON bytes in a padded uint8 tensor (no pickle)."""
        blob = torch.frombuffer(bytearray(json.dumps(items).encode()), dtype=torch.uint8)
        sizes = self.gather_rows(torch.tensor([blob.numel()]))
        padded = torch.zeros(int(sizes.max()), dtype=torch.uint8)
        padded[:blob.numel()] = blob
        rows = self.gather_rows(padded[None])
        out: list[str] = []
        for row, size in zip(rows, sizes.tolist(), strict=True):
            out += json.loads(bytes(row[:size].tolist()).decode())
        return out

    def mean_scalars(self, metrics: dict[str, float]) -> dict[str, float]:
        """Per-rank metrics averaged over ranks (every rank must pass the same keys)."""
        keys = sorted(metrics)
        vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                            device=self.device)
        dist.all_reduce(vals)
        return {k: v / self.world for k, v in zip(keys, vals.tolist(), strict=True)}

    def min_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def all_true(self, flag: bool) -> bool:
        return self.min_int(int(flag)) == 1

    def broadcast_params(self, params: Iterable[Tensor]) -> None:
        """Rank 0's values into every rank's parameters (the group starts from one state)."""
        with torch.no_grad():
            for p in params:
                buf = p.detach().to(self.device).clone()
                dist.broadcast(buf, src=0)
                p.copy_(buf.to(p.device, p.dtype))

    def own_rows(self, t: Tensor) -> Tensor:
        """This rank's rows of a tensor gathered with `gather_rows`."""
        n = t.shape[0] // self.world
        return t[self.rank * n:(self.rank + 1) * n]
