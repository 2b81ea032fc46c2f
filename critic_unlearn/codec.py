"""Trajectories and adapter state dicts <-> bytes. Never pickle.

A blob is a plain safetensors file (any safetensors tool can open it). Its `__metadata__` holds
`schema` (kind and version), `header` (JSON of the non-tensor fields) and `sha256` over schema,
header and every tensor's name, dtype, shape and bytes. Truncated, tampered or foreign bytes raise
`CodecError` naming what was wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct

import safetensors.torch
import torch
from torch import Tensor

from critic_unlearn.types import SamplerSettings, Trajectory

TRAJECTORY_SCHEMA = "critic-unlearn/trajectory/1"
STATE_DICT_SCHEMA = "critic-unlearn/state-dict/1"


class CodecError(ValueError):
    """Bytes that are not a valid record of the expected schema."""


def checksum(schema: str, header: str, tensors: dict[str, Tensor]) -> str:
    """sha256 over the schema, the JSON header and each tensor (sorted by name)."""
    h = hashlib.sha256()
    h.update(schema.encode())
    h.update(b"\0")
    h.update(header.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # hashed in place, no copy
    return h.hexdigest()


def _pack(schema: str, header: dict, tensors: dict[str, Tensor]) -> bytes:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header_json = json.dumps(header, sort_keys=True, allow_nan=True)
    meta = {
        "schema": schema,
        "header": header_json,
        "sha256": checksum(schema, header_json, tensors),
    }
    return safetensors.torch.save(tensors, metadata=meta)


def _read_metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise CodecError(f"record is {len(data)} bytes, too short to hold a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CodecError(f"record truncated: header says {n} bytes, only {len(data) - 8} follow")
    try:
        return json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CodecError(f"record header is not valid JSON: {e}") from None


def _unpack(data: bytes, schema: str) -> tuple[dict, dict[str, Tensor]]:
    data = bytes(data)
    meta = _read_metadata(data)
    if meta.get("schema") != schema:
        raise CodecError(
            f"record schema is {meta.get('schema')!r}, expected {schema!r}: written by another "
            "version or kind of record; rewrite it with this version"
        )
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors raises its own SafetensorError on bad framing
        raise CodecError(f"record payload is corrupt or truncated: {e}") from None
    if checksum(schema, meta.get("header", ""), tensors) != meta.get("sha256"):
        raise CodecError("record checksum mismatch: the bytes were changed after writing")
    return json.loads(meta["header"]), tensors


def encode_trajectory(traj: Trajectory) -> bytes:
    tensors = {
        "latents": traj.latents,
        "positions": traj.positions,
        "steps": traj.steps,
        "timesteps": traj.timesteps,
        "log_probs": traj.log_probs,
    }
    if traj.image is not None:
        tensors["image"] = traj.image
    header = {
        "prompt_id": traj.prompt_id,
        "prompt": traj.prompt,
        "role": traj.role,
        "reward": None if math.isnan(traj.reward) else traj.reward,
        "version": traj.version,
        "actor_id": traj.actor_id,
        "seed": traj.seed,
        "sampler": {
            "num_steps": traj.sampler.num_steps,
            "eta": traj.sampler.eta,
            "guidance_scale": traj.sampler.guidance_scale,
            "log_prob_reduction": traj.sampler.log_prob_reduction,
        },
    }
    return _pack(TRAJECTORY_SCHEMA, header, tensors)


def decode_trajectory(data: bytes) -> Trajectory:
    header, t = _unpack(data, TRAJECTORY_SCHEMA)
    try:
        return Trajectory(
            prompt_id=header["prompt_id"],
            prompt=header["prompt"],
            role=header["role"],
            latents=t["latents"],
            positions=t["positions"],
            steps=t["steps"],
            timesteps=t["timesteps"],
            log_probs=t["log_probs"],
            reward=float("nan") if header["reward"] is None else float(header["reward"]),
            version=int(header["version"]),
            actor_id=int(header["actor_id"]),
            seed=int(header["seed"]),
            sampler=SamplerSettings(**header["sampler"]),
            image=t.get("image"),
        )
    except (KeyError, TypeError) as e:
        raise CodecError(f"trajectory record lacks field {e}") from None


def encode_state_dict(state: dict[str, Tensor], meta: dict[str, str] | None = None) -> bytes:
    """Adapter weights with a small string manifest (version, base model, LoRA config hash)."""
    return _pack(STATE_DICT_SCHEMA, dict(meta or {}), state)


def decode_state_dict(data: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    header, tensors = _unpack(data, STATE_DICT_SCHEMA)
    return tensors, header
