"""Nested training state (tensors, optimiser states, counters) <-> one file, atomically, no pickle.

Tensors go to a safetensors blob (`codec.encode_state_dict`, with a checksum); everything else is
a JSON tree in which each tensor is replaced by a reference and dicts keep their key types
(optimiser states use int keys). The file is written under a temporary name and renamed, so a
crash leaves the previous checkpoint intact, never half of a new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from critic_unlearn.codec import CodecError, decode_state_dict, encode_state_dict
from critic_unlearn.io_utils import atomic_write_bytes


def _flatten(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, tensors) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"cannot checkpoint a {type(obj).__name__}; use tensors, numbers, str, dict, list"
    )


def _unflatten(node: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__dict__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__dict__"]}
        if "__list__" in node:
            items = [_unflatten(v, tensors) for v in node["__list__"]]
            return tuple(items) if node.get("tuple") else items
    return node


def pack_state(state: dict) -> bytes:
    tensors: dict[str, Tensor] = {}
    tree = _flatten(state, tensors)
    return encode_state_dict(tensors, {"tree": json.dumps(tree, allow_nan=True)})


def unpack_state(data: bytes) -> dict:
    tensors, meta = decode_state_dict(data)
    return _unflatten(json.loads(meta["tree"]), tensors)


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_write_bytes(path, pack_state(state))


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        return unpack_state(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist") from None
    except (CodecError, KeyError, json.JSONDecodeError) as e:
        raise CodecError(
            f"checkpoint {str(path)!r} is unreadable ({e}); delete it to start over, or restore "
            "an earlier copy"
        ) from None
