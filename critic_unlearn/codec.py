"""Trajectories and adapter state dicts <-> bytes. Never pickle.

A blob is a plain safetensors file (any safetensors tool can open it). Its `__metadata__` holds
`schema` (kind and version), `header` (JSON of the non-tensor fields) and `checksum`, written as
`<algorithm>:<hex digest>` (today `xxh3-128:...`) over schema, header and every tensor's name,
dtype, shape, place in the file and bytes. Truncated, tampered or foreign bytes raise `CodecError`
naming what was wrong.

The checksum is XXH3-128 (the `xxhash` package), not a cryptographic hash: it guards against
truncation, bit rot and mix-ups, not against someone who can write to Redis (they could recompute
any unkeyed digest, sha256 included). For that job it is about an order of magnitude cheaper than
BLAKE3 and sha256 (bench/micro/replay_throughput.py times the codec), close to a memcpy of the same
bytes, and its 128 bits make an accidental collision negligible. BLAKE3 would be the pick if the
digest had to resist forgery.

Copies: encoding writes the safetensors framing itself and joins header and tensor memory into the
blob with one copy (safetensors' own `save` builds the file in a Rust buffer and copies that into
`bytes`); the checksum reads the tensors' memory in place. Decoding checks the index as the
safetensors loader does, hashes the received bytes in place, then copies the tensor data once into
one writable buffer that the returned tensors view; with `copy=False` (the replay sampler) the
tensors view the received bytes themselves. What is left end to end is mostly glibc giving every
new multi-MB buffer fresh pages (see bench/micro/replay_throughput.py).

Blobs of the codec's first format carry `sha256` (hex) instead of `checksum`; they still decode,
with that format's sha256 definition. Anything without a recognised checksum is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
import warnings
from collections.abc import Iterable, Mapping

import torch
import xxhash
from torch import Tensor

from critic_unlearn.types import SamplerSettings, Trajectory

TRAJECTORY_SCHEMA = "critic-unlearn/trajectory/1"
# a trajectory with soft tokens (adversarial pool prompt): its own version, so a reader that
# predates them refuses it instead of re-scoring it as plain text; plain ones stay /1
SOFT_TRAJECTORY_SCHEMA = "critic-unlearn/trajectory/2"
STATE_DICT_SCHEMA = "critic-unlearn/state-dict/1"
CHECKSUM_ALGORITHM = "xxh3-128"

# safetensors dtype codes <-> torch dtypes (the format's names)
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header

if sys.byteorder != "little":  # safetensors is little-endian; tensors are written as in memory
    raise ImportError("critic_unlearn.codec supports little-endian machines only")


# torch warns when a tensor views read-only memory (decode with copy=False, documented there);
# only warnings raised from this module are silenced
warnings.filterwarnings("ignore", message="The given buffer is not writable", module=__name__)


class CodecError(ValueError):
    """Bytes that are not a valid record of the expected schema."""


# An entry of the tensor index: name, dtype code, shape, [start, end) in the data section, bytes.
_Entry = tuple[str, str, tuple[int, ...], tuple[int, int], memoryview]


def _raw(t: Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, in place (no copy)."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


def _frame(text: str) -> bytes:
    b = text.encode("utf-8", "surrogatepass")  # JSON may carry lone surrogates ("\\ud800")
    return struct.pack("<Q", len(b)) + b


def _digest(schema: str, header: str, entries: Iterable[_Entry]) -> str:
    """XXH3-128 over schema, header and each entry (sorted by name): its index, then its bytes.

    Strings are length-prefixed and numbers fixed-width, so no two indexes hash the same text.
    """
    h = xxhash.xxh3_128(_frame(schema) + _frame(header))
    for name, code, shape, (start, end), data in sorted(entries, key=lambda e: e[0]):
        dims = struct.pack(f"<{len(shape) + 3}Q", len(shape), *shape, start, end)
        h.update(_frame(name) + _frame(code) + dims)
        h.update(data)
    return f"{CHECKSUM_ALGORITHM}:{h.hexdigest()}"


def _legacy_sha256(schema: str, header: str, entries: Iterable[_Entry]) -> str:
    """The checksum of blobs written before xxh3 (key `sha256`): hex sha256, same bytes order."""
    h = hashlib.sha256()
    h.update(schema.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(header.encode("utf-8", "surrogatepass"))
    for name, code, shape, _, data in sorted(entries, key=lambda e: e[0]):
        h.update(f"\0{name}\0{_DTYPES[code]}\0{shape}\0".encode("utf-8", "surrogatepass"))
        h.update(data)
    return h.hexdigest()


def _cpu_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"tensor name {name!r} is not allowed: use a string other than "
                             "'__metadata__'")
        if not isinstance(t, Tensor):
            raise TypeError(f"{name!r} is a {type(t).__name__}, not a tensor")
        if t.dtype not in _CODES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which the codec cannot store")
        out[name] = t.detach().contiguous().cpu()  # no copy for contiguous CPU tensors
    return out


def _layout(tensors: dict[str, Tensor]) -> list[_Entry]:
    """Tensors in file order (widest dtype first, then name: every tensor stays aligned)."""
    entries, pos = [], 0
    for name in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        t = tensors[name]
        n = t.numel() * t.element_size()
        entries.append((name, _CODES[t.dtype], tuple(t.shape), (pos, pos + n), _raw(t)))
        pos += n
    return entries


def checksum(schema: str, header: str, tensors: Mapping[str, Tensor]) -> str:
    """`xxh3-128:<hex>` over the schema, the JSON header and each tensor (sorted by name).

    The tensors' memory is hashed in place; CUDA tensors are copied to the CPU first.
    """
    return _digest(schema, header, _layout(_cpu_tensors(tensors)))


def _pack(schema: str, header: dict, tensors: Mapping[str, Tensor]) -> bytes:
    cpu = _cpu_tensors(tensors)
    entries = _layout(cpu)
    header_json = json.dumps(header, sort_keys=True, allow_nan=True)
    index: dict[str, object] = {
        "__metadata__": {
            "schema": schema,
            "header": header_json,
            "checksum": _digest(schema, header_json, entries),
        }
    }
    for name, code, shape, offsets, _ in entries:
        index[name] = {"dtype": code, "shape": list(shape), "data_offsets": list(offsets)}
    head = json.dumps(index, separators=(",", ":")).encode()
    head += b" " * (-(8 + len(head)) % 8)  # data starts 8-aligned, as safetensors writes it
    # one allocation, one copy of each tensor: bytes.join reads the memoryviews directly
    return b"".join([struct.pack("<Q", len(head)), head, *(e[4] for e in entries)])


def _parse(data: bytes | bytearray | memoryview) -> tuple[dict, list[_Entry], memoryview]:
    """The metadata, the tensor index (checked like safetensors does) and the data section."""
    view = memoryview(data).cast("B")
    if len(view) < 8:
        raise CodecError(f"record is {len(view)} bytes, too short to hold a safetensors header")
    (n,) = struct.unpack_from("<Q", view)
    if n > len(view) - 8:
        raise CodecError(f"record truncated: header says {n} bytes, only {len(view) - 8} follow")
    if n > _MAX_HEADER:
        raise CodecError(f"record header is {n} bytes, more than the {_MAX_HEADER} allowed")
    try:
        index = json.loads(bytes(view[8 : 8 + n]))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise CodecError(f"record header is not valid JSON: {e}") from None
    if not isinstance(index, dict):
        raise CodecError(f"record header is a JSON {type(index).__name__}, not an object")
    meta = index.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CodecError("record metadata is not a mapping of strings")
    body = view[8 + n :]
    entries = []
    for name, spec in index.items():
        try:
            code, shape, (start, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
            ok = (
                code in _DTYPES
                and all(type(d) is int and d >= 0 for d in shape)
                and type(start) is int
                and type(end) is int
                and 0 <= start <= end
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CodecError(f"record header describes tensor {name!r} badly: {spec!r}")
        size = math.prod(shape) * _DTYPES[code].itemsize
        if end - start != size:
            raise CodecError(
                f"record header gives tensor {name!r} ({code}, shape {shape}) {end - start} "
                f"bytes, its shape needs {size}"
            )
        entries.append((name, code, tuple(shape), (start, end), body[start:end]))
    pos = 0
    for name, _, _, (start, end), _ in sorted(entries, key=lambda e: e[3]):
        if start != pos:
            raise CodecError(
                f"record header places tensor {name!r} at byte {start} of the data, expected {pos}"
            )
        pos = end
    if pos != len(body):
        what = "truncated" if pos > len(body) else "followed by stray bytes"
        raise CodecError(
            f"record {what}: its tensors need {pos} bytes of data, {len(body)} are present"
        )
    return meta, entries, body


def _unpack(
    data: bytes | bytearray | memoryview, *schemas: str, copy: bool = True
) -> tuple[dict, dict[str, Tensor], str]:
    """Header fields, tensors and the schema (one of `schemas`) of a checked record.

    `copy=False`: the tensors view `data` itself (see `decode_trajectory`)."""
    meta, entries, body = _parse(data)
    schema = meta.get("schema")
    if schema not in schemas:
        expected = " or ".join(repr(s) for s in schemas)
        raise CodecError(
            f"record schema is {schema!r}, expected {expected}: written by another "
            "version or kind of record; rewrite it with this version"
        )
    header = meta.get("header", "")
    if "checksum" in meta:
        algorithm = meta["checksum"].partition(":")[0]
        if algorithm != CHECKSUM_ALGORITHM:
            raise CodecError(
                f"record checksum algorithm {algorithm!r} is unknown (this version reads "
                f"{CHECKSUM_ALGORITHM!r} and legacy sha256)"
            )
        ok = _digest(schema, header, entries) == meta["checksum"]
    elif "sha256" in meta:  # the first format: sha256 over the same fields
        ok = _legacy_sha256(schema, header, entries) == meta["sha256"]
    else:
        raise CodecError("record has no checksum in its metadata: not written by this codec")
    if not ok:
        raise CodecError("record checksum mismatch: the bytes were changed after writing")
    try:
        fields = json.loads(header)
    except (ValueError, RecursionError) as e:
        raise CodecError(f"record header field is not valid JSON: {e}") from None
    if not isinstance(fields, dict):
        raise CodecError(f"record header field is a JSON {type(fields).__name__}, not an object")
    # one copy of the data section into a writable buffer (or none, copy=False); each tensor
    # views it through a storage of its own that starts at the tensor's first byte
    # (storage_offset 0): some torch code reads a storage from its start (torch.set_rng_state)
    buf = bytearray(body) if copy else body
    base = torch.frombuffer(buf, dtype=torch.uint8, count=1).data_ptr() if len(buf) else 0
    tensors = {}
    for name, code, shape, (start, end), _ in entries:
        dtype = _DTYPES[code]
        if start == end:  # frombuffer refuses empty buffers
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif (base + start) % dtype.itemsize:
            # misaligned (a foreign writer, or memory handed in at an odd address): its own copy
            raw = torch.frombuffer(buf, dtype=torch.uint8, count=end - start, offset=start)
            tensors[name] = raw.clone().view(dtype).reshape(shape)
        else:
            count = (end - start) // dtype.itemsize
            tensors[name] = torch.frombuffer(
                buf, dtype=dtype, count=count, offset=start
            ).reshape(shape)
    return fields, tensors, schema


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
    if traj.soft_tokens is not None:
        tensors["soft_tokens"] = traj.soft_tokens
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
    schema = TRAJECTORY_SCHEMA if traj.soft_tokens is None else SOFT_TRAJECTORY_SCHEMA
    return _pack(schema, header, tensors)


def decode_trajectory(data: bytes | bytearray | memoryview, *, copy: bool = True) -> Trajectory:
    """The trajectory in `data`, checked. Its tensors own one fresh buffer; with `copy=False`
    they view `data` instead (no copy: the replay sampler's path, where the received bytes are
    used once). Views of an immutable `bytes` must not be written in place: copy them first."""
    header, t, schema = _unpack(data, TRAJECTORY_SCHEMA, SOFT_TRAJECTORY_SCHEMA, copy=copy)
    soft = t.get("soft_tokens")
    if (soft is not None) != (schema == SOFT_TRAJECTORY_SCHEMA) or (
        soft is not None and (soft.ndim != 2 or soft.dtype != torch.float32)
    ):
        raise CodecError(
            f"trajectory record of schema {schema!r} has soft tokens "
            f"{None if soft is None else (soft.dtype, tuple(soft.shape))}; /1 has none, /2 "
            "has a (k, E) float32 tensor"
        )
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
            soft_tokens=soft,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CodecError(f"trajectory record lacks field or has a bad one: {e}") from None


def encode_state_dict(state: dict[str, Tensor], meta: dict[str, str] | None = None) -> bytes:
    """Adapter weights with a small string manifest (version, base model, LoRA config hash)."""
    return _pack(STATE_DICT_SCHEMA, dict(meta or {}), state)


def decode_state_dict(
    data: bytes | bytearray | memoryview,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    header, tensors, _ = _unpack(data, STATE_DICT_SCHEMA)
    return tensors, header
