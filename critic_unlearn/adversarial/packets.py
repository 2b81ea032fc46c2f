"""The soft-prompt pool inside a weights packet: one extra uint8 tensor beside the adapter's.

A version's pool (`WeightsPacket.pool`, the pool's own codec blob) rides in the same encoded blob
as the adapter (`fold_pool` before `replay.encode_packet`, `unfold_pool` after decoding), so every
route a version takes (the object store, the durable Redis copy) delivers it and the blob's
checksum covers it; the adapter's manifest checksum covers the adapter tensors alone.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from critic_unlearn.types import WeightsPacket

POOL_TENSOR = "soft_prompt_pool"  # the pool blob inside an adapter blob (no LoRA key is this)


def fold_pool(packet: WeightsPacket) -> WeightsPacket:
    """The packet with its pool blob moved into the tensors, ready for `encode_packet`."""
    if packet.pool is None:
        return packet
    blob = torch.frombuffer(bytearray(packet.pool), dtype=torch.uint8)
    return replace(packet, state_dict={**packet.state_dict, POOL_TENSOR: blob}, pool=None)


def unfold_pool(packet: WeightsPacket) -> WeightsPacket:
    """Inverse of `fold_pool` on a decoded packet: adapter tensors and the pool blob apart."""
    if POOL_TENSOR not in packet.state_dict:
        return packet
    state = dict(packet.state_dict)
    blob = state.pop(POOL_TENSOR)
    return replace(packet, state_dict=state, pool=blob.numpy().tobytes())
