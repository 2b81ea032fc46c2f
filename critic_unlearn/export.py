"""Export an unlearned adapter in the formats people load, and a merged pipeline with a model card.

Every run's `adapter/` folder holds, beside our own `adapter.safetensors` (the codec's format,
with its manifest and checksum), the same tensors in two standard layouts:

- diffusers' LoRA format: `pytorch_lora_weights.safetensors`, keys `unet.<module>.lora_A.weight` /
  `unet.<module>.lora_B.weight`, and the peft LoraConfig (rank, alpha, targets) in the
  safetensors header under `lora_adapter_metadata` (keys `unet.r`, `unet.lora_alpha`, ...), as
  `StableDiffusionPipeline.save_lora_weights(..., unet_lora_adapter_metadata=...)` writes it.
  `pipe.load_lora_weights(RUN/adapter)` reads it; the metadata carries lora_alpha, so the scale
  alpha / rank is ours even when alpha != rank.
- peft's format: `adapter_config.json` (the LoraConfig) and `adapter_model.safetensors`, keys
  `base_model.model.<module>.lora_A.weight`, as `PeftModel.save_pretrained` writes them:
  `PeftModel.from_pretrained(unet, RUN/adapter)` reads them.

`export_run(RUN, merged=OUT)` also writes a whole diffusers pipeline with the LoRA fused into the
UNet, or an SD3 model's transformer (`DiffusionPipeline.from_pretrained(OUT)` and done), and a
model card.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from critic_unlearn import sources
from critic_unlearn.codec import CodecError, decode_state_dict
from critic_unlearn.config import ConfigError, LoraConfig, RunConfig, load_config
from critic_unlearn.diffusion.contract import EXPORT_SPECS, POLICY_SETTINGS, absent_parts
from critic_unlearn.diffusion.lora import lora_config_hash, peft_config
from critic_unlearn.io_utils import atomic_write_bytes, atomic_write_text

OURS = "adapter.safetensors"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
PEFT_WEIGHTS = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME
PEFT_CONFIG = "adapter_config.json"  # peft's CONFIG_NAME
PEFT_PREFIX = "base_model.model."  # how PeftModel.save_pretrained names a wrapped model's keys
EXPORTS = Path("export")  # RUN/export/step_NNNNNN/: a snapshot's adapter in the standard formats


class ExportError(Exception):
    """A run folder that cannot be exported; the message says which path and what to do."""


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (set, frozenset)):
        return sorted(_jsonable(v) for v in x)
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, enum.Enum):
        return x.value
    return x


def lora_metadata(cfg: LoraConfig, base_model: str | None = None) -> dict[str, Any]:
    """The peft LoraConfig of our adapter as a JSON-able dict (what both formats store)."""
    c = peft_config(cfg)
    c.base_model_name_or_path = base_model
    return _jsonable(c.to_dict())


def _fp32(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def write_adapter_formats(
    folder: str | Path, state: dict[str, Tensor], cfg: LoraConfig, base_model: str | None = None,
    family: str = "sd1",
) -> dict[str, Path]:
    """Write `state` (peft's keys, as `get_adapter_state` gives them) into `folder` in diffusers'
    LoRA format (the keys of the backbone `family`: `unet.` for sd1, `transformer.` for sd3)
    and in peft's format; returns the paths written. Files are replaced atomically."""
    import diffusers.loaders

    spec = EXPORT_SPECS[family]
    writer = getattr(diffusers.loaders, spec.lora_writer)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _fp32(state)
    meta = lora_metadata(cfg, base_model)
    # diffusers writes its own format (keys and header) through its own writer; into a private
    # folder first, then renamed into place, so a reader never sees half a file
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        writer.save_lora_weights(
            tmp,
            weight_name=DIFFUSERS_WEIGHTS,
            **{f"{spec.prefix}_lora_layers": tensors,
               f"{spec.prefix}_lora_adapter_metadata": meta},
        )
        os.replace(tmp / DIFFUSERS_WEIGHTS, folder / DIFFUSERS_WEIGHTS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peft_tensors = {PEFT_PREFIX + k: v for k, v in tensors.items()}
    atomic_write_bytes(
        folder / PEFT_WEIGHTS, safetensors.torch.save(peft_tensors, metadata={"format": "pt"})
    )
    atomic_write_text(
        folder / PEFT_CONFIG, json.dumps({**meta, "inference_mode": True}, indent=2, sort_keys=True)
    )
    return {
        "diffusers": folder / DIFFUSERS_WEIGHTS,
        "peft_weights": folder / PEFT_WEIGHTS,
        "peft_config": folder / PEFT_CONFIG,
    }


# -- reading a run ------------------------------------------------------------------------------
def run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config every run writes to RUN/config.yaml."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise ExportError(
            f"run folder {str(run_dir)!r} does not exist; give the folder a run printed first "
            "('run folder: ...'), e.g. runs/<scenario>-s<seed>-<time>"
        )
    if not path.is_file():
        raise ExportError(
            f"{str(run_dir)!r} is not a run folder (no config.yaml); give the folder a run "
            "printed first ('run folder: ...'), e.g. runs/<scenario>-s<seed>-<time>"
        )
    try:
        return load_config(path, [])
    except ConfigError as e:
        raise ExportError(f"{path}: {e}") from None


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        return decode_state_dict(path.read_bytes())
    except CodecError as e:
        raise ExportError(f"adapter file {str(path)!r} is damaged ({e}); export a snapshot "
                          "instead (--snapshot STEP)") from None


def _snapshot_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "adapter" / "snapshots"
    return sorted(
        int(p.stem.removeprefix("step_"))
        for p in (folder.glob("step_*.safetensors") if folder.is_dir() else [])
        if p.stem.removeprefix("step_").isdigit()
    )


def run_adapter(
    run_dir: str | Path, snapshot: int | None = None
) -> tuple[dict[str, Tensor], dict[str, str], Path]:
    """The run's final adapter (or the snapshot of learner step `snapshot`): tensors, manifest,
    file. Errors name the path and what to do."""
    run_dir = Path(run_dir)
    steps = _snapshot_steps(run_dir)
    have = f"snapshots at steps {steps}" if steps else "no snapshots"
    if snapshot is None:
        path = run_dir / "adapter" / OURS
        if not path.is_file():
            raise ExportError(
                f"{str(path)!r} does not exist: the run has not finished ({have}); export a "
                "snapshot with --snapshot STEP, or finish the run (train it again: it resumes)"
            )
    else:
        path = run_dir / "adapter" / "snapshots" / f"step_{snapshot:06d}.safetensors"
        if not path.is_file():
            raise ExportError(f"{str(path)!r} does not exist; this run has {have}")
    state, manifest = _read(path)
    return state, manifest, path


def _check_shape(cfg: RunConfig, manifest: dict[str, str], path: Path) -> None:
    expected = lora_config_hash(cfg.lora)
    got = manifest.get("lora_config_hash")
    if got is not None and got != expected:
        raise ExportError(
            f"{str(path)!r} was trained with LoRA config {got}, but the run's config.yaml "
            f"describes {expected}; was config.yaml edited? Restore the run's lora settings"
        )


# -- the command --------------------------------------------------------------------------------
def export_run(
    run_dir: str | Path,
    *,
    snapshot: int | None = None,
    out: str | Path | None = None,
    merged: str | Path | None = None,
    base: str | None = None,
) -> dict[str, str]:
    """Write the run's adapter (or a snapshot's) in diffusers' and peft's formats, into `out`
    (default RUN/adapter, or RUN/export/step_NNNNNN for a snapshot); with `merged`, also a whole
    diffusers pipeline with the LoRA fused, and a model card. Returns what was written."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    state, manifest, src = run_adapter(run_dir, snapshot)
    _check_shape(cfg, manifest, src)
    if out is None:
        out = run_dir / ("adapter" if snapshot is None else EXPORTS / f"step_{snapshot:06d}")
    base_model = manifest.get("base_model") or cfg.model.pretrained
    family = adapter_family(state, src)
    written = write_adapter_formats(out, state, cfg.lora, base_model, family)
    summary = {"source": str(src), "adapter_dir": str(Path(out)), **{
        k: str(v) for k, v in written.items()}}
    if merged is not None:
        summary["merged"] = str(export_merged(
            Path(out), Path(merged), base or base_model, cfg, run_dir, manifest, family,
            card_base=base or cfg.model.pretrained,  # as the user named it, not a resolved path
        ))
    return summary


def export_merged(
    adapter_dir: Path,
    out: Path,
    base: str,
    cfg: RunConfig,
    run_dir: Path | None = None,
    manifest: dict[str, str] | None = None,
    family: str = "sd1",
    card_base: str | None = None,
) -> Path:
    """The base pipeline with the adapter in `adapter_dir` (diffusers' format) fused into its
    trainable module (the UNet, or an SD3 transformer: `family`), saved with `save_pretrained`
    into `out`, plus README.md (the model card, which names the base model as `card_base`,
    default `base`)."""
    import diffusers

    from critic_unlearn.diffusion.loading import ModelLoadError, check_model_source

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(
            f"--merged folder {str(out)!r} already exists and is not empty; remove it or give "
            "another folder"
        )
    try:
        source = check_model_source(base)
    except ModelLoadError as e:
        raise ExportError(f"{e} (or pass the base model with --base)") from None
    try:
        spec = EXPORT_SPECS[family]
        pipe = getattr(diffusers, spec.pipeline).from_pretrained(
            source,
            revision=cfg.model.revision,
            local_files_only=cfg.model.local_files_only,
            dtype=torch.float32,
            **absent_parts(family, source),
        )
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(
            f"could not load the base pipeline {source!r} ({first}); pass a local copy with "
            "--base DIR (diffusers layout, with model_index.json)"
        ) from None
    pipe.load_lora_weights(str(adapter_dir), weight_name=DIFFUSERS_WEIGHTS, adapter_name="unlearn")
    pipe.fuse_lora(components=[spec.prefix], lora_scale=1.0, adapter_names=["unlearn"])
    pipe.unload_lora_weights()  # the LoRA layers go, the fused weights stay
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if (Path(source) / POLICY_SETTINGS).is_file():  # e.g. the flow world's T5 token count
            shutil.copy2(Path(source) / POLICY_SETTINGS, tmp / POLICY_SETTINGS)
        if run_dir is not None and (run_dir / "eval" / "grids").is_dir():
            shutil.copytree(run_dir / "eval" / "grids", tmp / "grids")
        settings = Path(source) / POLICY_SETTINGS
        call = json.loads(settings.read_text()) if settings.is_file() else {}
        card = model_card(cfg, card_base or base, run_dir, manifest or {}, family, call)
        atomic_write_text(tmp / "README.md", card)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def adapter_family(state: dict[str, Tensor], where: str | Path) -> str:
    """The backbone an adapter belongs to, from its own keys (no model lookup, so a moved or
    offline base cannot turn an SD3 adapter into `unet.` keys)."""
    from critic_unlearn.diffusion.contract import family_of_adapter

    try:
        return family_of_adapter(state)
    except ValueError as e:
        raise ExportError(f"{str(where)!r}: {e}") from None


def _is_hub_id(model: str) -> bool:
    if sources.is_source("model", model):  # e.g. the embedded toy world
        return False
    return not (model.startswith((".", "/", "~")) or Path(model).exists())


def model_card(
    cfg: RunConfig, base: str, run_dir: Path | None, manifest: dict[str, str],
    family: str = "sd1", call: dict[str, Any] | None = None,
) -> str:
    """README.md of a merged pipeline: base model, concept, how it was trained, the eval table
    and the before/after grids when the run was evaluated, and the full config."""
    p = cfg.reward.prompts
    network = {"sd1": "UNet", "sd3": "transformer"}[family]
    extra = "".join(f", {k}={v!r}" for k, v in (call or {}).items())  # as it was trained
    pipeline = EXPORT_SPECS[family].pipeline
    algorithm = cfg.learner.algorithm
    if algorithm == "ppo":
        critic = "on" if cfg.critic.enabled else "off"
        algorithm = f"ppo (advantage {cfg.learner.advantage}, critic {critic})"
    front = ["---", "library_name: diffusers", "pipeline_tag: text-to-image"]
    if _is_hub_id(base):
        front.append(f"base_model: {base}")
    front += ["tags:", "- stable-diffusion", "- concept-erasure", "- machine-unlearning",
              "- critic-unlearn", "---", ""]
    lines = [
        f"# {base} without \"{p.concept}\"",
        "",
        f"`{base}` with a LoRA adapter fused into its {network}, trained with critic-unlearn "
        f"(critic-guided RL, {cfg.learner.algorithm}) to "
        f"stop drawing **{p.concept}** (forget prompts should look like \"{p.anchor}\"), while "
        "keeping retain prompts as the base model draws them. Everything but the "
        f"{network} is the "
        "base model's, unchanged.",
        "",
        "```python",
        f"from diffusers import {pipeline}",
        "",
        f'pipe = {pipeline}.from_pretrained("PATH/TO/THIS/FOLDER")',
        f'image = pipe("{p.concept}"{extra}).images[0]  # a forget prompt: the concept should be '
        "gone",
        "```",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}` |",
        f"| concept | {p.concept} |",
        f"| anchor | {p.anchor} |",
        f"| scenario | {cfg.scenario} |",
        f"| reward | {cfg.reward.name} |",
        f"| algorithm | {algorithm} |",
        f"| LoRA | rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}, on "
        f"{', '.join(cfg.lora.target_modules)} |",
        f"| sampler | DDIM, {cfg.sampler.num_steps} steps, eta {cfg.sampler.eta:g}, guidance "
        f"{cfg.sampler.guidance_scale:g} |",
    ]
    for key, label in (("version", "policy version"), ("step", "learner step"),
                       ("trajectories", "trajectories sampled")):
        if key in manifest:
            lines.append(f"| {label} | {manifest[key]} |")
    lines.append("")
    eval_md = run_dir / "eval" / "eval.md" if run_dir is not None else None
    if eval_md is not None and eval_md.is_file():
        lines += ["## Evaluation", "", eval_md.read_text().strip(), ""]
    if run_dir is not None and (run_dir / "eval" / "grids").is_dir():
        grids = sorted((run_dir / "eval" / "grids").glob("*.png"))
        if grids:
            lines += ["## Grids (top: base model, bottom: unlearned)", ""]
            lines += [f"![{g.stem}](grids/{g.name})" for g in grids]
            lines.append("")
    from critic_unlearn.config import dump_config

    lines += ["## Configuration", "", "```yaml", dump_config(cfg).rstrip(), "```", ""]
    return "\n".join(front + lines)
