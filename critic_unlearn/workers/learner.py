"""The learner's worker: sample a fresh-enough batch from the replay, step, publish.

Both runtimes run it: the local one calls it in this process, the Ray one as an actor
(`runtime.learner_worker.RayLearnerWorker`, which adds only what Ray needs). `try_step` waits at
most `wait_s` for the replay (the rate limiter or the staleness bound may hold it) and then
returns, so its caller stays responsive while the learner waits. When every stored record is
too old to draw and the limiter blocks the actors, `try_step` counts them as consumed (the
stale-buffer release). Each version goes out through the runtime's publisher (`Publisher`); the
one published during a call comes back in the call's report.

Data-parallel workers (`learner.num_workers` = N > 1, Ray runtime): N of these, one rank each
of a torch.distributed group (`join_group`); every call reaches every rank. Each draws its share
of the global batch (batch_size / N) and keeps it until all ranks hold theirs (one collective
says so), so the ranks step together; rank 0 publishes, clears and restores the shared state in
Redis and returns the report the run loop reads; the checkpoint holds every rank's random state.

Versions are never reused: a learner restored from a checkpoint labels its weights past the
newest version already published (the weight store's), so records that lost versions sampled
keep labels no new adapter takes, and their staleness stays positive.

Adversarial prompts in the loop (`attack.in_loop_every` = N > 0): every N policy versions, after
the step, the learned-prompt attack runs against the learner's own UNet (the adapter just
trained) and its tokens join the bounded soft-prompt pool; the pool goes out with that very
version, in the same packet (`adversarial.loop.PoolPublisher`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable

import torch

from critic_unlearn.adversarial.learn import require_soft_prompts
from critic_unlearn.adversarial.loop import PoolPublisher, refresh_pool
from critic_unlearn.adversarial.pool import SoftPromptPool
from critic_unlearn.config import ConfigError, RunConfig, staleness_advice
from critic_unlearn.learner.distributed import Solo, form_group
from critic_unlearn.learner.publisher import Publisher
from critic_unlearn.replay import ReplaySampler, ReplayTimeout, WeightStore
from critic_unlearn.replay.sampler import SampledRecord
from critic_unlearn.rewards.openclip_loading import LoadedClip, load_open_clip
from critic_unlearn.training.reports import StepReport
from critic_unlearn.training.setup import build_learner
from critic_unlearn.types import Batch

log = logging.getLogger(__name__)
POOL_KEY = "attack_pool"  # the soft-prompt pool in the learner's part of a checkpoint
PublisherFactory = Callable[[WeightStore], Publisher]  # given the run's durable weight store


class LearnerWorker:
    """Holds the learner, the replay sampler and the weight publisher."""

    def __init__(self, cfg: RunConfig, namespace: str, publisher: PublisherFactory,
                 rank: int = 0) -> None:
        """`publisher` makes the runtime's publisher from the run's durable weight store (rank
        0's; the other ranks of a data-parallel group publish nothing)."""
        if cfg.runtime.num_threads:
            torch.set_num_threads(cfg.runtime.num_threads)
        self.cfg, self.rank = cfg, rank
        self.group: Solo = Solo()
        self.store = WeightStore(cfg.replay, namespace)
        self.publisher: Publisher | None = publisher(self.store) if rank == 0 else None
        self.pool: SoftPromptPool | None = None
        self.attack_clip: LoadedClip | None = None
        self.attack_s_total = 0.0
        self.pending: list[SampledRecord] = []  # this rank's share, held until all ranks have it
        self.wait_s_total = self.step_s_total = 0.0  # time waiting for data, time stepping
        if cfg.attack.in_loop_every > 0 and rank == 0:
            if cfg.learner.algorithm == "esd":
                raise ConfigError(
                    "attack.in_loop_every > 0 needs learner.algorithm = ppo (ESD conditions on "
                    "prompt text only); set attack.in_loop_every=0"
                )
            self.pool = SoftPromptPool(cfg.attack.pool_size)
            self.publisher = PoolPublisher(self.publisher, self.pool)
        self.learner = build_learner(cfg, self.publisher)
        if self.pool is not None:
            require_soft_prompts(self.learner.c, "attack.in_loop_every > 0")
        if self.pool is not None:  # the attacker's classifier: the reward's CLIP, as in `attack`
            self.attack_clip = load_open_clip(
                cfg.reward.clip_model, cfg.reward.clip_pretrained, self.learner.device
            )
        # each rank draws its own records (rank 0 keeps the single learner's seed)
        self.sampler = ReplaySampler(cfg.replay, namespace=namespace, seed=self._rank_seed())
        self.stale_unblocks = 0

    def _rank_seed(self, offset: int = 0) -> int:
        """This rank's seed: the learner's for rank 0, apart for the others."""
        return self.cfg.learner.seed + 7919 * self.rank + offset

    def join_group(self, address: str, port: int, world: int) -> None:
        """Become rank `self.rank` of `world` learner workers meeting at address:port; the
        group starts from rank 0's LoRA and critic."""
        self.group = form_group(address, port, self.rank, world,
                                timeout_s=self.cfg.runtime.stall_timeout_s)
        self.learner.join(self.group)

    def __repr__(self) -> str:
        return "learner"

    def setup(self, state: dict | None, restart: bool = False) -> StepReport:
        """Resume from a checkpoint's state (or start afresh: clear the run's replay and
        weights), then publish the current weights so actors start from them. `restart`: this
        replaces a learner that died mid-run; the replay and its live limiter counters stay."""
        lead = self.rank == 0
        if state is None and not restart:
            if lead:
                self.sampler.clear()
                self.store.clear()
        elif state is not None:
            self.learner.load_state_dict(state["learner"])
            self._restore_random_state(state["learner"])
            saved = state["learner"].get(POOL_KEY)
            if self.pool is not None and saved is not None:  # the pool goes on where it was
                for p in SoftPromptPool.from_bytes(saved.numpy().tobytes()).prompts:
                    self.pool.add(p.text, p.vectors)
            if restart or not lead:
                pass  # the limiter's counters in Redis are newer than the checkpoint's
            elif self.sampler.size() >= self.cfg.replay.min_size_to_sample:
                self.sampler.rate_limiter.load_state_dict(state["replay_limiter"])
            else:  # the buffer did not survive (private server): count afresh
                self.sampler.rate_limiter.reset()
        self._skip_published_versions()
        if self.publisher is not None:
            self.publisher.publish(self.learner.weights())
            if isinstance(self.publisher, PoolPublisher):
                self.publisher.flush()
        return self._report(False, reason="setup")

    def _skip_published_versions(self) -> None:
        """Label the next weights past every version already published (rank 0 reads the
        store before it publishes; every rank takes its answer)."""
        if self.rank == 0:
            read = self.store.latest_version()
            mine = -1 if read is None else read
        else:
            mine = 2**62  # the other ranks take rank 0's reading
        newest = self.group.min_int(mine)
        if newest > self.learner.version:
            log.warning("learner: versions %d..%d were published by a learner that was lost; "
                        "this one labels its weights from %d on", self.learner.version + 1,
                        newest, newest + 1)
            self.learner.version = newest + 1

    def _restore_random_state(self, saved: dict) -> None:
        """Each rank's own RNG streams from the checkpoint (the learner's picks, the replay
        draws); a rank the checkpoint did not have gets fresh streams from the seed."""
        ranks = saved.get("ranks")
        if ranks is None:  # a checkpoint of one learner from before: its picks are restored
            return
        gens, draws = ranks["learner_rng"], ranks["sampler_rng"]
        fresh = self._rank_seed(self.learner.steps)
        if self.rank < len(gens):
            self.learner.gen.set_state(gens[self.rank])
        else:  # a rank the saving group did not have: new streams, not the run-start ones
            self.learner.gen.manual_seed(fresh)
        if self.rank < len(draws):
            self.sampler.set_rng_state(draws[self.rank])
        else:
            self.sampler.rng.seed(fresh)

    def try_step(self, wait_s: float) -> StepReport:
        """One learner step on a batch of version >= version - max_staleness, or a wait."""
        share = self.cfg.learner.batch_size // self.group.world
        reason = ""
        t_wait = time.perf_counter()
        if len(self.pending) < share:
            try:
                self.pending += self.sampler.sample(
                    share - len(self.pending),
                    min_version=self.sampler.min_version_for(self.learner.version),
                    timeout_s=wait_s,
                )
            except ReplayTimeout as e:
                reason = str(e) + self._unblock_if_all_stale()
        ready = self.group.all_true(len(self.pending) == share)  # every rank holds its share
        self.wait_s_total += time.perf_counter() - t_wait
        if not ready:  # every rank's reason, so a stall names the one that waited
            reasons = [r for r in self.group.gather_strings([reason]) if r]
            return self._report(False, reason="; ".join(reasons) or "waiting for data")
        records, self.pending = self.pending, []
        batch = Batch.from_trajectories([r.trajectory for r in records])
        staleness = Counter((self.learner.version - batch.versions).tolist())
        t0 = time.perf_counter()
        version = self.learner.version
        metrics = self.learner.step(batch)
        step_s = time.perf_counter() - t0
        self.step_s_total += step_s
        busy = self.wait_s_total + self.step_s_total
        metrics["learner/data_wait_share"] = self.wait_s_total / busy if busy > 0 else 0.0
        if isinstance(self.publisher, PoolPublisher):
            soft = batch.soft_tokens or []
            metrics["adversarial/batch_pool_share"] = sum(v is not None for v in soft) / len(
                batch.prompts
            )
            metrics.update(self._adversarial(self.publisher, version))
        metrics["replay/size"] = float(self.sampler.size())
        metrics["replay/stale_unblocks"] = float(self.stale_unblocks)
        return self._report(True, metrics, dict(staleness), step_s)

    def _adversarial(self, publisher: PoolPublisher, before: int) -> dict[str, float]:
        """After a step: every attack.in_loop_every policy versions, attack the adapter just
        trained and add what was found to the pool; then publish what the step held, and the
        refreshed pool at once with this version even off the learner.publish_every beat."""
        v, every = self.learner.version, self.cfg.attack.in_loop_every
        if v == before or v % every:
            publisher.flush()
            return {}
        assert self.pool is not None and self.attack_clip is not None
        m = refresh_pool(self.pool, self.learner.c, self.attack_clip, self.cfg, step=v)
        self.attack_s_total += m["adversarial/attack_s"]
        publisher.flush(publisher.held or self.learner.weights())
        return {**m, "adversarial/attack_s_total": round(self.attack_s_total, 3)}

    def _unblock_if_all_stale(self) -> str:
        """Break the deadlock the limiter and the staleness bound can make together (see
        `ReplaySampler.release_if_all_stale`): all stored records too old to draw, actors
        blocked. Too small a max_staleness for error_buffer / learner.batch_size makes this
        frequent; the metric replay/stale_unblocks counts it."""
        released = self.sampler.release_if_all_stale(
            self.sampler.min_version_for(self.learner.version), batch=self.cfg.sampler.batch_size
        )
        if released is None:
            return ""
        self.stale_unblocks += 1
        msg = (
            f"; all {released.size} stored records are older than the staleness bound and the "
            f"rate limiter blocked the actors: counted them as consumed (samples "
            f"{released.samples_before} -> {released.samples_after})."
        )
        if self.stale_unblocks == 1 or self.stale_unblocks % 50 == 0:  # advice once, not dozens
            msg += " " + staleness_advice(self.cfg) + f" ({self.stale_unblocks} so far)"
            log.warning("learner: replay deadlock broken%s", msg)
        else:
            log.debug("learner: replay deadlock broken%s", msg)
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
            None if self.publisher is None else self.publisher.take_new(),
            step_s,
            reason,
            self.learner.updates,
        )

    def checkpoint_state(self) -> dict:
        """The learner's share of a checkpoint (the driver adds actors and counters); every
        rank calls it (its random streams are gathered), rank 0's answer is the one kept."""
        g = self.group
        ranks = {
            "learner_rng": list(g.gather_rows(self.learner.gen.get_state()[None])),
            "sampler_rng": list(g.gather_rows(self.sampler.rng_state()[None])),
        }
        if self.rank > 0:
            return {}  # the ranks are equal but for their random streams, now in rank 0's
        learner = self.learner.state_dict()
        learner["ranks"] = ranks
        if self.pool is not None:  # the pool's own blob (checksummed) as one uint8 tensor
            learner[POOL_KEY] = torch.frombuffer(bytearray(self.pool.to_bytes()), dtype=torch.uint8)
        return {"learner": learner, "replay_limiter": self.sampler.rate_limiter.state_dict()}

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

