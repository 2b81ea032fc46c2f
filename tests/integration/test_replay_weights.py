"""The durable adapter copy (`replay.WeightStore`) on real Redis: round trip, isolation, checks."""

from __future__ import annotations

import uuid

import pytest
import torch

from critic_unlearn.codec import CodecError
from critic_unlearn.replay import WeightStore, decode_packet, encode_packet
from critic_unlearn.types import WeightsPacket


def _packet(version: int) -> WeightsPacket:
    state = {"unet.lora_A": torch.full((2, 3), version * 1e-3),
             "unet.lora_B": torch.arange(6.0).reshape(3, 2) * version}
    return WeightsPacket(version, state, {"base_model": "tiny", "lora_config_hash": "abc"})


def test_put_get_latest_and_clear_stay_in_their_namespace(replay_cfg):
    cfg = replay_cfg()
    ns, other_ns = f"w-{uuid.uuid4().hex[:8]}", f"w-{uuid.uuid4().hex[:8]}"
    with_store = WeightStore(cfg, ns)
    other = WeightStore(cfg, other_ns)
    try:
        assert with_store.latest_version() is None and with_store.get() is None
        for v in (3, 4):
            p = _packet(v)
            with_store.put(encode_packet(p), p)
        got = with_store.get()
        assert with_store.latest_version() == 4 and got is not None and got.version == 4
        assert torch.equal(got.state_dict["unet.lora_B"], _packet(4).state_dict["unet.lora_B"])
        assert got.manifest["base_model"] == "tiny"
        assert other.latest_version() is None  # another run's namespace sees nothing
        with_store.clear()
        assert with_store.latest_version() is None and with_store.get() is None
    finally:
        with_store.clear()
        with_store.close()
        other.close()


def test_torn_blob_is_refused_and_bad_namespace_is_named(replay_cfg):
    blob = encode_packet(_packet(2))
    assert decode_packet(blob).version == 2
    with pytest.raises(CodecError):
        decode_packet(blob[:-16])
    with pytest.raises(ValueError, match=r"replay.namespace = 'a:b\*' is not allowed"):
        WeightStore(replay_cfg(), "a:b*")
