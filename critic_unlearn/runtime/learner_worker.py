"""The learner as one Ray actor: sample a fresh-enough batch from Redis, step, publish.

`try_step` waits at most `wait_s` for the replay (the rate limiter or the staleness bound may
hold it) and then returns, so the driver stays responsive to Ctrl-C and dead actors while the
learner waits. Publishing goes through `RayPublisher`: one `ray.put` and one Redis write per
version; the reference comes back to the driver in the step's report.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Protocol

import torch

from critic_unlearn.config import RunConfig
from critic_unlearn.replay import ReplaySampler, ReplayTimeout, WeightStore
from critic_unlearn.runtime.cluster import quiet_worker_logging
from critic_unlearn.runtime.weights import RayPublisher
from critic_unlearn.training.reports import Published, StepReport
from critic_unlearn.training.setup import build_learner
from critic_unlearn.types import Batch, WeightsPacket

log = logging.getLogger(__name__)


class ReportingPublisher(Protocol):
    """Publishes each new version and hands its record out once (into the step's report)."""

    def publish(self, packet: WeightsPacket) -> None: ...

    def take_new(self) -> Published | None: ...


class LearnerWorker:
    """Holds the learner, the replay sampler and the weight publisher."""

    def __init__(
        self, cfg: RunConfig, namespace: str, publisher: ReportingPublisher | None = None
    ) -> None:
        """`publisher`: the local runtime's in-process one; default: object store + Redis."""
        if publisher is None:
            quiet_worker_logging()
        if cfg.runtime.num_threads:
            torch.set_num_threads(cfg.runtime.num_threads)
        self.cfg = cfg
        self.store = WeightStore(cfg.replay, namespace)
        self.publisher = publisher or RayPublisher(self.store)
        self.learner = build_learner(cfg, self.publisher)
        self.sampler = ReplaySampler(cfg.replay, namespace=namespace)
        self.stale_unblocks = 0

    def __repr__(self) -> str:
        return "learner"

    def setup(self, state: dict | None, restart: bool = False) -> StepReport:
        """Resume from a checkpoint's state (or start afresh: clear the run's replay and
        weights), then publish the current weights so actors start from them. `restart`: this
        replaces a learner that died mid-run; the replay and its live limiter counters stay."""
        if state is None and not restart:
            self.sampler.clear()
            self.store.clear()
        elif state is not None:
            self.learner.load_state_dict(state["learner"])
            if restart:
                pass  # the limiter's counters in Redis are newer than the checkpoint's
            elif self.sampler.size() >= self.cfg.replay.min_size_to_sample:
                self.sampler.rate_limiter.load_state_dict(state["replay_limiter"])
            else:  # the buffer did not survive (private server): count afresh
                self.sampler.rate_limiter.reset()
        self.publisher.publish(self.learner.weights())
        return self._report(False, reason="setup")

    def try_step(self, wait_s: float) -> StepReport:
        """One learner step on a batch of version >= version - max_staleness, or a wait."""
        lc = self.cfg.learner
        try:
            records = self.sampler.sample(
                lc.batch_size,
                min_version=self.sampler.min_version_for(self.learner.version),
                timeout_s=wait_s,
            )
        except ReplayTimeout as e:
            return self._report(False, reason=str(e) + self._unblock_if_all_stale())
        batch = Batch.from_trajectories([r.trajectory for r in records])
        staleness = Counter((self.learner.version - batch.versions).tolist())
        t0 = time.perf_counter()
        metrics = self.learner.step(batch)
        step_s = time.perf_counter() - t0
        metrics["replay/size"] = float(self.sampler.size())
        metrics["replay/stale_unblocks"] = float(self.stale_unblocks)
        return self._report(True, metrics, dict(staleness), step_s)

    def _unblock_if_all_stale(self) -> str:
        """Break the deadlock the limiter and the staleness bound can make together (see
        `ReplaySampler.release_if_all_stale`): all stored records too old to draw, actors
        blocked. Too small a max_staleness for error_buffer / learner.batch_size makes this
        frequent; the metric replay/stale_unblocks counts it."""
        released = self.sampler.release_if_all_stale(
            self.sampler.min_version_for(self.learner.version)
        )
        if released is None:
            return ""
        self.stale_unblocks += 1
        msg = (
            f"; all {released.size} stored records are older than the staleness bound and the "
            f"rate limiter blocked the actors: counted them as consumed (samples "
            f"{released.samples_before} -> {released.samples_after}). If this repeats, raise "
            "replay.max_staleness or lower replay.error_buffer"
        )
        log.warning("learner: replay deadlock broken%s", msg)
        return msg

    def _report(
        self,
        stepped: bool,
        metrics: dict | None = None,
        staleness: dict | None = None,
        step_s: float = 0.0,
        reason: str = "",
    ) -> StepReport:
        return StepReport(
            stepped,
            self.learner.steps,
            self.learner.version,
            metrics or {},
            staleness or {},
            self.publisher.take_new(),
            step_s,
            reason,
        )

    def checkpoint_state(self) -> dict:
        """The learner's share of a checkpoint (the driver adds actors and counters)."""
        return {
            "learner": self.learner.state_dict(),
            "replay_limiter": self.sampler.rate_limiter.state_dict(),
        }

    def adapter(self) -> tuple[dict[str, torch.Tensor], dict[str, str], int]:
        p = self.learner.weights()
        return p.state_dict, p.manifest, p.version

    def pid(self) -> int:
        return os.getpid()

    def replay_stats(self) -> dict[str, float]:
        return self.sampler.stats()

    def close(self) -> None:
        self.sampler.close()
        self.store.close()
