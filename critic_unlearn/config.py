"""The whole run's configuration: pydantic models, YAML files, dotted command-line overrides.

Every setting lives here (no globals). Models are frozen and reject unknown keys, so a typo in a
YAML file or an override fails loudly instead of being ignored. `ConfigError` carries one line
for people: the field, the value, what is allowed.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class ModelConfig(Section):
    """The diffusion model to unlearn from: a hub id or a local folder in diffusers layout."""

    pretrained: str = "toyworld"  # hub id, local folder, or "toyworld" (the embedded default)
    revision: str | None = None
    # base weights on actors and learner, and the policy's compute precision (autocast to it
    # when fp16/bf16; DDIM step and log-probs in fp32; LoRA and optimiser state always fp32)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    local_files_only: bool = False  # True: never touch the network


class LoraConfig(Section):
    """LoRA adapters on the UNet (peft). Only these parameters are ever trained."""

    rank: PositiveInt = 4
    alpha: PositiveFloat = 4.0
    dropout: Fraction = 0.0
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]
    init: Literal["gaussian", "default"] = "gaussian"  # B = 0 either way: LoRA starts as a no-op


class SamplerConfig(Section):
    """DDIM with eta > 0: the stochastic policy whose per-step log-probs RL needs."""

    num_steps: PositiveInt = 20  # S, denoising steps per trajectory
    eta: float = 1.0  # must be > 0: eta = 0 is deterministic and has no density
    guidance_scale: float = Field(5.0, ge=1.0)  # classifier-free guidance weight w
    keep_steps: PositiveInt | None = None  # K of S transitions stored (random, seeded); None = all
    # flow-matching models only (Flow-GRPO-Fast / MixGRPO): only this many consecutive steps are
    # stochastic (the SDE: stored, trained); the others are deterministic ODE steps (eta 0). The
    # window's start is drawn per trajectory from its seed. None: every step is stochastic
    sde_window: PositiveInt | None = None
    batch_size: PositiveInt = 8  # trajectories per sampling call on one actor
    height: PositiveInt | None = None  # pixels; None = the model's default
    width: PositiveInt | None = None
    log_prob_reduction: Literal["sum", "mean"] = "sum"  # over latent dims; see docs/algorithm.md

    @model_validator(mode="after")
    def _check(self) -> SamplerConfig:
        if not self.eta > 0:
            raise ValueError(
                f"sampler.eta = {self.eta} is not allowed: DDIM with eta = 0 is deterministic and "
                "has no log-probability; use eta > 0 (1.0 is the DDPM-like default)"
            )
        if self.sde_window is not None and self.sde_window > self.num_steps:
            raise ValueError(
                f"sampler.sde_window = {self.sde_window} exceeds sampler.num_steps = "
                f"{self.num_steps}; use at most num_steps, or null for every step"
            )
        if self.keep_steps is not None and self.keep_steps > self.num_steps:
            raise ValueError(
                f"sampler.keep_steps = {self.keep_steps} exceeds sampler.num_steps = "
                f"{self.num_steps}; keep at most num_steps transitions"
            )
        return self


class PromptsConfig(Section):
    """Forget and retain prompt sets: literal lists and/or text files, expanded by templates."""

    concept: str = "red"  # the concept to forget, as text
    anchor: str = "a shape"  # what a forget image should look like instead
    # per-prompt anchors: when set, a forget prompt's concept text is the prompt itself and its
    # anchors are the prompt with `concept` replaced by each substitute (reward uses the best)
    anchor_substitutes: list[str] = []
    forget: list[str] = []
    retain: list[str] = []
    forget_file: Path | None = None  # text file, one prompt a line ('#' starts a comment)
    retain_file: Path | None = None
    templates: list[str] = ["{}"]  # each prompt is put in every template at its "{}"
    forget_fraction: Fraction = 0.5  # share of each actor batch drawn from the forget prompts


NUDENET_EXPOSED = [  # NudeNet's classes counted as nudity (the I2P / ESD evaluation set)
    "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED", "ANUS_EXPOSED",
]


class ClassifierRewardConfig(Section):
    """reward.name = "classifier": r = p(class) of an image classifier (or 1 - p(class))."""

    path: Path | None = None  # TorchScript file, or JSON config beside safetensors
    class_index: int | None = None  # output index whose probability is the reward
    head: int | str | None = None  # multi-head output: tuple index or dict key
    output: Literal["logits", "probs"] = "logits"  # what the classifier returns
    mode: Literal["prob", "not_prob"] = "prob"  # r = p(class), or 1 - p(class)
    image_size: PositiveInt | None = None  # pixels (square); None keeps the size


class NudeNetRewardConfig(Section):
    """reward.name = "nudenet" (optional extra [nudity], AGPL-3.0): forget r = -max detector
    score over `classes` + anchor_weight * s(x0, anchor); retain r = s(x0, prompt) with the CLIP."""

    classes: list[str] = NUDENET_EXPOSED
    model: Path | None = None  # ONNX detector; None = the 320n model in NudeNet's wheel
    resolution: PositiveInt = 320  # pixels (square) the detector sees


# reward settings that were flat keys of `reward`, and the section field each is now
MOVED_REWARD_KEYS = {
    "classifier_path": "classifier.path",
    "classifier_class": "classifier.class_index",
    "classifier_head": "classifier.head",
    "classifier_output": "classifier.output",
    "classifier_mode": "classifier.mode",
    "classifier_image_size": "classifier.image_size",
    "nudenet_classes": "nudenet.classes",
    "nudenet_model": "nudenet.model",
    "nudenet_resolution": "nudenet.resolution",
}


def moved_key_error(section: str, data: Any, moved: dict[str, str]) -> None:
    """Raise ValueError naming the first key of `data` that moved into a sub-section: its
    value, and where to write it now."""
    if not isinstance(data, dict):
        return
    for old, new in moved.items():
        if old in data:
            raise ValueError(
                f"{section}.{old} = {data[old]!r}: this setting moved; write it as "
                f"{section}.{new} (YAML: `{new.split('.')[0]}:` under `{section}:`, with "
                f"`{new.split('.', 1)[1]}: {data[old]!r}` inside)"
            )


class RewardConfig(Section):
    name: Literal["clip_concept", "classifier", "nudenet"] = "clip_concept"
    clip_model: str = "toyworld"  # open_clip model name, or a local folder, or "toyworld"
    clip_pretrained: str | None = None  # open_clip pretrained tag (e.g. "openai")
    anchor_weight: float = 1.0  # alpha in r = -s(x0, concept) + alpha * s(x0, anchor)
    clip_batch_size: PositiveInt = 32  # images per CLIP forward pass
    # the settings of the reward `name` chooses, and only of that one (None for the others)
    classifier: ClassifierRewardConfig | None = None
    nudenet: NudeNetRewardConfig | None = None  # name = "nudenet": its defaults when not given
    standardize: bool = True  # per-prompt running mean/std (DDPO's tracker)
    standardize_buffer: PositiveInt = 16  # most recent rewards remembered per prompt
    standardize_min_count: PositiveInt = 16  # fewer seen: use the batch's mean/std instead
    # the scale of the standardisation: "pooled", one std of every remembered reward for all
    # prompts (each prompt keeps its own mean); "prompt", each prompt's own std (DDPO's). Values
    # go through the same map, and a prompt's own std of a few near-equal rewards (1e-6 for one
    # reward) multiplies the critic's error by up to 1e6: measured EV -1e7 in a run
    standardize_scale: Literal["pooled", "prompt"] = "pooled"
    prompts: PromptsConfig = PromptsConfig()

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        moved_key_error("reward", data, MOVED_REWARD_KEYS)
        if isinstance(data, dict) and data.get("name") == "nudenet" and data.get("nudenet") is None:
            data = {**data, "nudenet": {}}  # the detector's defaults, shown by `config show`
        return data

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        for other in ("classifier", "nudenet"):
            if other != self.name and getattr(self, other) is not None:
                raise ValueError(
                    f"reward.{other} is set but reward.name = {self.name!r}: its settings would "
                    f"be ignored; set reward.name = {other}, or remove reward.{other}"
                )
        c = self.classifier
        if self.name == "classifier" and (c is None or c.path is None):
            raise ValueError(
                "reward.classifier.path is missing: reward.name = 'classifier' needs the path of "
                "a classifier to score images with"
            )
        if self.name == "classifier" and c is not None and c.class_index is None:
            raise ValueError(
                "reward.classifier.class_index is missing: reward.name = 'classifier' needs the "
                "index of the class whose probability is the reward"
            )
        return self


class CriticConfig(Section):
    enabled: bool = True  # False: terminal reward broadcast to every step (DDPO)
    # "learned": the critic network below; "oracle": no network, V(s_i) = the reward model on
    # the decoded predicted x0 of state i (the ceiling of per-step credit: at t ~ 0 it is r)
    kind: Literal["learned", "oracle"] = "learned"
    # what the critic reads: the decoded x_t ("noisy"), the decoded predicted x0 ("x0_pred"),
    # or the latent x_t itself through a small trainable conv encoder ("latent", DPOK's choice:
    # no VAE decode and no CLIP pass, so no reward feature either)
    input: Literal["noisy", "x0_pred", "latent"] = "noisy"
    latent_channels: PositiveInt = 4  # channels of the model's latents (input = latent)
    # the head also reads the reward model's score of the decoded input state, with a learned
    # timestep-dependent weight: where the state is nearly clean, that score is the reward
    reward_feature: bool = True
    timestep_input: bool = True
    fusion: Literal["film", "concat"] = "concat"
    hidden: PositiveInt = 256  # width of the MLP head
    timestep_dim: PositiveInt = 128  # width of the sinusoidal timestep embedding
    text_cache_size: PositiveInt = 4096  # prompts whose CLIP text embedding is kept
    decode_batch_size: PositiveInt = 64  # stored states per VAE decode for the critic
    diagnostics_window: PositiveInt = 8  # learner steps pooled for the per-timestep EV metrics
    # True: the image tower trains too (the toy worlds' held-out EV went negative: it overfits);
    # False: only the head learns, on features computed once per learner step
    train_image_tower: bool = False
    lr: PositiveFloat = 1e-4
    loss: Literal["mse", "huber"] = "mse"
    # stored states per trajectory in each critic update; None = all of them. Every stored
    # state's value enters the advantages and targets, so every one is fitted (at random)
    train_states: PositiveInt | None = None
    # critic-only learner steps before the first policy update; they come on top of
    # learner.max_steps (which counts policy updates)
    warmup_steps: Annotated[int, Field(ge=0)] = 50
    # start from a pretrained critic: None (random head), a checkpoint written by
    # `critic-unlearn critic pretrain`, or "auto" (pretrain once, cached under cache_dir, keyed by
    # model, reward, prompts, sampler, critic and pretrain settings)
    init: str | None = None
    cache_dir: Path = Path(".cache/critics")
    pretrain_trajectories: PositiveInt = 512  # base-policy trajectories sampled for pretraining
    pretrain_epochs: PositiveInt = 6  # passes over their stored states
    pretrain_batch_size: PositiveInt = 64  # states per critic update while pretraining
    pretrain_val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25  # held out for the EV
    pretrain_seed: int = 7_777  # seeds of the pretraining trajectories (disjoint from runs)

    @model_validator(mode="after")
    def _check(self) -> CriticConfig:
        if self.input == "latent" and self.reward_feature:
            raise ValueError(
                "critic.input = 'latent' reads latents without decoding them, so there is no "
                "image for critic.reward_feature; set critic.reward_feature = false"
            )
        if self.reward_feature and self.train_image_tower:
            raise ValueError(
                "critic.reward_feature = true reads frozen image features, but "
                "critic.train_image_tower = true; set one of them to false"
            )
        return self


class EsdConfig(Section):
    """learner.algorithm = "esd": the ESD baseline (learner/esd.py)."""

    eta: float = 1.0  # guidance strength: the target is e_u - eta * (e_c - e_u)


class LearnerConfig(Section):
    algorithm: Literal["ppo", "esd"] = "ppo"
    batch_size: PositiveInt = 32  # trajectories per learner step
    minibatch_size: PositiveInt = 8  # trajectories per gradient step; must divide batch_size
    train_steps: PositiveInt | None = None  # transitions per trajectory per step; None = all kept
    epochs: PositiveInt = 1
    # transitions whose DDIM sigma_t is below this are not trained on: near x_0 sigma is tiny
    # (0.02-0.04), so their log-probs swamp the importance ratios while deciding little
    min_train_std: float = Field(0.0, ge=0)
    lr: PositiveFloat = 2e-3
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: PositiveFloat = 1.0
    clip_range: PositiveFloat = 0.2  # PPO epsilon (use ~1e-4 with log_prob_reduction = mean)
    kl_weight: float = Field(0.0, ge=0)  # beta in + beta * KL(pi_theta || pi_base), all transitions
    # anchors to the base model where it must not change (learner/anchors.py): the KL of the
    # adapted step to the base step on the transitions named in anchor_on, times this weight
    anchor_weight: float = Field(0.0, ge=0)
    # "retain": retain prompts' transitions; "neighbours": forget states conditioned on the
    # prompt with the concept replaced by one of reward.prompts.anchor_substitutes
    anchor_on: list[Literal["retain", "neighbours"]] = ["retain", "neighbours"]
    advantage: Literal["gae", "vtrace", "terminal"] = "gae"
    gae_lambda: Fraction = 0.9  # lambda of the advantages (GAE / V-trace)
    # lambda of the critic's TD(lambda) / V-trace targets; None = gae_lambda. Short-horizon
    # advantages (small gae_lambda) can then pair with Monte Carlo-like targets (1.0)
    target_lambda: Fraction | None = None
    rho_bar: PositiveFloat = 1.0
    c_bar: PositiveFloat = 1.0
    value_target: Literal["mc", "td_lambda", "vtrace"] = "td_lambda"
    advantage_clip: PositiveFloat = 5.0
    esd: EsdConfig = EsdConfig()  # algorithm = esd
    max_steps: PositiveInt = 200  # budget: the run stops after this many policy updates
    publish_every: PositiveInt = 1  # publish the adapter every N learner steps
    checkpoint_every: PositiveInt = 20
    gpus: float = Field(0.0, ge=0)  # per learner worker
    # data-parallel learner workers (Ray runtime): one torch.distributed group, each worker
    # steps on batch_size / num_workers trajectories, gradients averaged (gloo on CPUs, NCCL on
    # GPUs); the local runtime runs one learner
    num_workers: PositiveInt = 1
    gradient_checkpointing: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> LearnerConfig:
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"learner.minibatch_size = {self.minibatch_size} does not divide "
                f"learner.batch_size = {self.batch_size}; pick a divisor"
            )
        n = self.num_workers
        if n > 1 and (self.minibatch_size % n or self.batch_size % n):
            raise ValueError(
                f"learner.num_workers = {n} must divide learner.minibatch_size = "
                f"{self.minibatch_size} (and so learner.batch_size = {self.batch_size}): each "
                "worker takes an equal share of every minibatch; pick a divisor"
            )
        if n > 1 and 0 < self.gpus < 1:
            raise ValueError(
                f"learner.gpus = {self.gpus:g} with learner.num_workers = {n}: NCCL needs a "
                "GPU of its own per worker; set learner.gpus = 1 (or 0 for CPU workers)"
            )
        if n > 1 and self.algorithm != "ppo":
            raise ValueError(
                f"learner.num_workers = {n} runs learner.algorithm = 'ppo' only (got "
                f"{self.algorithm!r}); set learner.num_workers = 1"
            )
        return self


class ReplayConfig(Section):
    """The Redis replay buffer (see critic_unlearn/replay/keys.py for the key layout)."""

    url: str = "redis://127.0.0.1:6379/0"  # redis://, rediss:// (TLS) or unix://; user:password@
    # name of an environment variable holding the password, read where each connection is made
    # (driver, actors, learner): the password then stays out of config.yaml and the job command
    password_env: str | None = None
    namespace: str | None = None  # key prefix; None = the run name; A-Z a-z 0-9 _ . -
    capacity: PositiveInt = 1024  # trajectories kept in all (ring of slots, split over shards)
    shards: list[str] = []  # extra Redis URLs; shard = actor id mod (1 + len(shards))
    sampling: Literal["uniform", "recent", "prioritized"] = "uniform"
    recent_window: PositiveInt = 256  # trajectories: "recent" samples the newest this many
    priority_exponent: float = Field(0.6, ge=0)  # alpha: P(i) ~ priority_i ** alpha
    max_staleness: Annotated[int, Field(ge=0)] = 4  # policy versions; older is never sampled
    min_size_to_sample: PositiveInt = 32  # trajectories stored before any sample is granted
    samples_per_insert: PositiveFloat = 4.0  # trajectories sampled per trajectory inserted
    error_buffer: PositiveFloat = 64.0  # samples of slack either way; >= max(1, spi)
    timeout_s: PositiveFloat = 60.0  # seconds a blocked write/sample waits, then raises
    retry_deadline_s: PositiveFloat = 30.0  # seconds of reconnect attempts before giving up
    socket_timeout_s: PositiveFloat = 10.0  # seconds one Redis round trip may take
    # TLS (rediss:// URLs only), PEM files on every node: the CA that signed the server's
    # certificate (None: the system's CAs), and a client certificate + key for tls-auth-clients
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # glibc only: keep multi-MB record buffers on the warm heap instead of fresh mmaps (mallopt,
    # process-wide): encode/send/receive/decode without a page fault per 4 KiB
    keep_buffers: bool = True

    @model_validator(mode="after")
    def _check(self) -> ReplayConfig:
        if self.error_buffer < max(1.0, self.samples_per_insert):
            raise ValueError(
                f"replay.error_buffer = {self.error_buffer} must be >= max(1, "
                f"replay.samples_per_insert = {self.samples_per_insert}), or writers and the "
                "sampler can block each other forever; raise it"
            )
        return self


class ActorsConfig(Section):
    num: int | Literal["auto"] = 2  # "auto": one per GPU in the cluster
    gpus_per_actor: float = Field(0.0, ge=0)
    cpus_per_actor: PositiveFloat = 1.0
    weight_poll_s: PositiveFloat = 1.0
    weight_fetch_timeout_s: PositiveFloat = 60.0  # seconds to fetch a pushed adapter, then Redis
    max_restarts: Annotated[int, Field(ge=0)] = 3
    restart_backoff_s: PositiveFloat = 1.0  # seconds before restarting a dead actor; doubles
    restart_backoff_max_s: PositiveFloat = 30.0  # seconds, cap of that delay
    # torch.compile the actor's UNet (in place, LoRA included): the first batch pays the compile
    # (minutes at SD-1.5 scale), later ones run faster on a GPU; bench.micro.gpu_suite measures both
    compile: bool = False


# fsspec schemes a run folder may live on: stores that take whole-object writes, or filesystems
# with a rename (training/storage.py); read-only ones (http, zip, github) cannot hold a run
STORAGE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "file", "hdfs", "sftp")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


def run_dir_url(value: str) -> tuple[str, str] | None:
    """(scheme, rest) of a URL run_dir, None for a local path; raises ValueError for a URL that
    cannot hold a run, naming the value and what to write instead."""
    m = _URL.match(value)
    if m is None:
        return None
    scheme, rest = m[1].lower(), m[2]
    if scheme not in STORAGE_SCHEMES:
        raise ValueError(
            f"runtime.run_dir = {value!r}: {scheme}:// cannot hold a run folder; use a local "
            f"path or a URL of one of {', '.join(s + '://' for s in STORAGE_SCHEMES)}"
        )
    if scheme == "file" and not rest.startswith("/"):
        raise ValueError(
            f"runtime.run_dir = {value!r}: a file:// URL needs an absolute path, "
            "e.g. file:///mnt/shared/runs"
        )
    if scheme != "file" and not rest.split("/", 1)[0]:
        raise ValueError(
            f"runtime.run_dir = {value!r} names no bucket or host; write {scheme}://BUCKET/PREFIX"
        )
    return scheme, rest


class RuntimeConfig(Section):
    kind: Literal["ray", "local"] = "ray"
    # the run goes to run_dir/<run name>: a local folder, or a URL of shared storage (s3://BUCKET/
    # PREFIX, gs://..., file:///mnt/...) that a run on another node resumes from; such a run is
    # written to a local staging copy and pushed after every checkpoint (training/storage.py)
    run_dir: str = "runs"
    staging_dir: Path | None = None  # local copy of a URL run_dir; None: ~/.cache/critic-unlearn
    # fsspec options of a URL run_dir, e.g. {"client_kwargs": {"endpoint_url": URL}}; written to
    # config.yaml, so credentials belong in the store's own variables (AWS_ACCESS_KEY_ID, ...)
    storage_options: dict[str, Any] = {}
    run_name: str | None = None  # None: <scenario>-s<seed>-<time>
    device: str = "auto"  # "auto": cuda when available, else cpu
    seed: int = 0
    num_threads: PositiveInt | None = None
    ray_address: str | None = None  # Ray cluster; None: RAY_ADDRESS if set, else start one here
    ray_num_cpus: PositiveInt | None = None  # CPUs of a cluster started here; None: all
    learner_cpus: PositiveFloat = 1.0  # CPUs the learner actor reserves (Ray resource)
    progress_every_s: PositiveFloat = 10.0  # seconds between progress lines without a terminal
    stall_timeout_s: PositiveFloat = 900.0  # seconds without a learner step: fail, say why
    learner_wait_s: PositiveFloat = 1.0  # seconds a learner call waits on the replay, then returns
    shutdown_timeout_s: PositiveFloat = 120.0  # seconds to finish a step and checkpoint on Ctrl-C
    learner_max_restarts: Annotated[int, Field(ge=0)] = 3  # a dead learner restarts from its
    # last checkpoint this many times in one run; one more death stops the run
    # record every call to the learner and actor workers as a Ray task event (the dashboard's
    # task list and timeline, `ray list tasks`). Off by default: a run makes several calls a
    # second per actor, and Ray's GCS keeps up to 100,000 events (task_events_max_num_task_in_gcs),
    # so it grows for hours (+43% in a 10-minute soak of 8 tiny actors; flat with this off)
    task_events: bool = False

    @field_validator("run_dir", mode="before")
    @classmethod
    def _run_dir(cls, value: Any) -> Any:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if isinstance(value, str):
            run_dir_url(value)
        return value


class ZeroShotConfig(Section):
    """UA / IRA without a judge: zero-shot open_clip classification, concept vs neighbours."""

    use: Literal["auto", "always", "never"] = "auto"  # auto: when eval.judge is None
    clip_model: str = "ViT-L-14"  # open_clip name, local folder (see reward.clip_model)
    clip_pretrained: str | None = "openai"  # open_clip pretrained tag
    concept: str | None = None  # the concept's class name; None = reward.prompts.concept
    neighbours: list[str] = []  # the other classes (e.g. the other nine Imagenette classes)
    templates: list[str] = ["a photo of a {}."]  # class name at "{}"; embeddings averaged
    batch_size: PositiveInt = 64  # images per CLIP forward pass


class FidelityConfig(Section):
    """FID and KID of unlearned vs base images on retain prompts (torchmetrics, FID Inception)."""

    enabled: bool = False
    # torch-fidelity's FID Inception (TF 2015-12-05 weights) as safetensors; where there is
    # internet: python -m critic_unlearn.evaluation.fidelity PATH
    weights: Path = Path(".cache/fid/inception-2015-12-05.safetensors")
    kid_subsets: PositiveInt = 100  # random subsets KID is averaged over
    kid_subset_size: PositiveInt = 1000  # images per KID subset; capped at the retain images
    seed: int = 0  # seeds KID's subset draws
    batch_size: PositiveInt = 32  # images per Inception forward pass


class EvalConfig(Section):
    images_per_prompt: PositiveInt = 16
    seeds_offset: int = 1_000_000  # held-out seeds start here
    batch_size: PositiveInt = 32
    templates: list[str] = []  # held-out "{}" templates for eval prompts; [] = prompts.templates
    # UA/IRA classifier: "toyworld", a judge folder; None = eval.zero_shot (CLIP) when configured
    judge: str | None = "toyworld"
    clip_model: str | None = None  # CLIP for the CLIP score; None = reward.clip_model
    clip_pretrained: str | None = None  # its open_clip pretrained tag (with clip_model)
    grid_images: PositiveInt = 8  # images per row in each before/after grid
    zero_shot: ZeroShotConfig = ZeroShotConfig()
    fidelity: FidelityConfig = FidelityConfig()


class AttackConfig(Section):
    """Robustness attacks on an unlearned model (`critic-unlearn attack`, and `eval`'s report):
    a synonym/paraphrase sweep and a learned-prompt attack (k soft tokens after BOS)."""

    enabled: bool = False  # True: `eval` runs the attacks too (`attack` runs them regardless)
    # extra wordings per concept word, for models whose judge lists no words (e.g. SD):
    # {"nudity": ["naked", "nude"]}; the judge's own vocabulary (classifier.json) is always used
    synonyms: dict[str, list[str]] = {}
    # extra "{}" templates for the sweep, on top of eval.templates (held out from training)
    paraphrase_templates: list[str] = []
    num_tokens: PositiveInt = 3  # k, learned token embeddings inserted after BOS
    # one set of k tokens for all forget prompts (their images share each step's batch)
    steps: PositiveInt = 30  # Adam steps: the attack's fixed budget
    lr: PositiveFloat = 0.01  # Adam step size, in token-embedding units (toy rows have norm ~0.16)
    batch_size: PositiveInt = 8  # images (seeds) per optimisation step
    sample_steps: PositiveInt | None = None  # DDIM steps differentiated through; None = sampler's
    images_per_prompt: PositiveInt = 16  # judged images per attacked forget prompt (held out)
    sweep_images: PositiveInt = 4  # judged images per sweep wording (held-out seeds)
    seed: int = 0  # optimisation seeds are seed * 1_000_003 + step * batch_size + i
    seeds_offset: int = 3_000_000  # judged images' seeds start here (disjoint from eval's)
    init: Literal["concept", "random"] = "concept"  # start from the concept word's embedding
    grid_images: PositiveInt = 8  # images per row in each attack grid
    # adversarial prompts in the training loop: every N learner steps the learned-prompt attack
    # runs against the current adapter and its tokens join the forget prompts; 0 = off
    in_loop_every: Annotated[int, Field(ge=0)] = 0
    in_loop_steps: PositiveInt | None = None  # Adam steps per in-loop attack; None = steps
    # True: each in-loop attack starts from the newest pool entry's tokens, not the concept words
    in_loop_warm_start: bool = False
    pool_size: PositiveInt = 8  # found token sets kept for the loop (oldest dropped)
    pool_fraction: Fraction = 0.5  # share of forget prompts an actor draws from the pool


class RunConfig(Section):
    scenario: str = "default"
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    sampler: SamplerConfig = SamplerConfig()
    reward: RewardConfig = RewardConfig()
    critic: CriticConfig = CriticConfig()
    learner: LearnerConfig = LearnerConfig()
    replay: ReplayConfig = ReplayConfig()
    actors: ActorsConfig = ActorsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    eval: EvalConfig = EvalConfig()
    attack: AttackConfig = AttackConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved_key_error("learner", data.get("learner"), {"esd_eta": "esd.eta"})
        return data

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        lc = self.learner
        if (lc.anchor_weight > 0 and "neighbours" in lc.anchor_on
                and not self.reward.prompts.anchor_substitutes):
            raise ValueError(
                "learner.anchor_on includes 'neighbours' but reward.prompts.anchor_substitutes "
                "is empty; list the concept's neighbours there, or set learner.anchor_on = "
                "[retain]"
            )
        k = self.sampler.keep_steps or self.sampler.num_steps
        n = self.learner.train_steps
        if self.learner.algorithm == "ppo" and n is not None and n > k:
            raise ValueError(
                f"learner.train_steps = {self.learner.train_steps} exceeds the {k} transitions "
                "stored per trajectory (sampler.keep_steps or sampler.num_steps); lower it"
            )
        if lc.num_workers > 1 and self.runtime.kind != "ray":
            raise ValueError(
                f"learner.num_workers = {lc.num_workers} needs runtime.kind = 'ray' (the local "
                "runtime runs one learner); set runtime.kind = ray or learner.num_workers = 1"
            )
        return self


class ConfigError(ValueError):
    """A configuration problem, told in one line."""


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            lines.append(f"{field}: unknown key (value {e['input']!r}); check the spelling")
        elif e["type"] == "value_error":
            lines.append(str(e["ctx"]["error"]) if "ctx" in e else e["msg"])
        else:
            lines.append(f"{field} = {e['input']!r}: {e['msg']}")
    return "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`learner.lr=3e-5` -> (["learner", "lr"], 3e-5); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. learner.lr=3e-5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML scenario (or the defaults), apply dotted overrides, validate."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; see configs/ for scenarios")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            msg = f"config file {str(p)!r} is not valid YAML: {e}".replace("\n", " ")
            raise ConfigError(msg) from None
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise ConfigError(f"config file {str(p)!r} must hold a mapping, not {kind}")
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def load_run_config(
    run_dir: Path, config: Path | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """A run folder's config.yaml (or `config`), with overrides: what `eval` and `attack` read."""
    path = config or Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{str(path)!r} does not exist: RUN_DIR must be a run folder written by "
            "`critic-unlearn train`, or pass --config SCENARIO.yaml"
        )
    return load_config(path, overrides or [])


def staleness_advice(cfg: RunConfig) -> str:
    """What to set when the deadlock breaker fires: with samples_per_insert S, one actor batch
    of A trajectories is drawn S * A times, S * A / B learner steps (policy versions), so a
    batch sampled at the start of that window is that many versions old by its end."""
    r, spi = cfg.replay, cfg.replay.samples_per_insert
    actors = cfg.actors.num if isinstance(cfg.actors.num, int) else 1
    steps = math.ceil(spi * cfg.sampler.batch_size * actors / cfg.learner.batch_size)
    need = steps + 2
    if r.max_staleness < need:
        return (
            f"With replay.samples_per_insert = {spi:g}, {actors} actor(s) of sampler.batch_size "
            f"= {cfg.sampler.batch_size} and learner.batch_size = {cfg.learner.batch_size}, one "
            f"round of actor batches is ~{steps} policy versions: set replay.max_staleness >= "
            f"{need} (now {r.max_staleness})"
        )
    return (
        "The bound is large enough for this reuse; a slow actor (or a restart) held the rest "
        "back: it is harmless when rare"
    )
