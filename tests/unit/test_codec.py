"""Trajectories and state dicts <-> bytes: bit-identical round trips, every corruption caught."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from critic_unlearn.codec import (
    CodecError,
    checksum,
    decode_state_dict,
    decode_trajectory,
    encode_state_dict,
    encode_trajectory,
)
from critic_unlearn.types import SamplerSettings, Trajectory

DATA = Path(__file__).parent / "data"  # blobs written by the sha256 codec (before xxh3)


def make_traj(reward: float = 0.25, image: bool = True) -> Trajectory:
    g = torch.Generator().manual_seed(0)
    return Trajectory(
        prompt_id="p7",
        prompt="a red circle",
        role="forget",
        latents=torch.randn(4, 4, 8, 8, generator=g).half(),
        positions=torch.tensor([0, 1, 2, 3]),
        steps=torch.tensor([0, 1, 2]),
        timesteps=torch.tensor([901, 801, 701]),
        log_probs=torch.randn(3, generator=g),
        reward=reward,
        version=12,
        actor_id=3,
        seed=99,
        sampler=SamplerSettings(num_steps=10, eta=1.0, guidance_scale=5.0),
        image=torch.randint(0, 255, (16, 16, 3), dtype=torch.uint8) if image else None,
    )


def assert_same(a: Trajectory, b: Trajectory) -> None:
    for f in ("latents", "positions", "steps", "timesteps", "log_probs"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f
    assert (a.image is None) == (b.image is None)
    if a.image is not None:
        assert torch.equal(a.image, b.image)
    for f in ("prompt_id", "prompt", "role", "version", "actor_id", "seed", "sampler"):
        assert getattr(a, f) == getattr(b, f), f


@pytest.mark.parametrize("image", [True, False])
def test_trajectory_round_trip_is_bit_identical(image):
    t = make_traj(image=image)
    back = decode_trajectory(encode_trajectory(t))
    assert_same(t, back)
    assert back.reward == t.reward


def test_unscored_reward_survives_as_nan():
    back = decode_trajectory(encode_trajectory(make_traj(reward=float("nan"))))
    assert back.reward != back.reward


def test_blob_is_plain_safetensors():
    tensors = safetensors.torch.load(encode_trajectory(make_traj()))
    assert set(tensors) >= {"latents", "log_probs", "timesteps"}


def test_truncated_bytes_are_rejected():
    data = encode_trajectory(make_traj())
    for cut in (0, 5, 100, len(data) // 2, len(data) - 1):
        with pytest.raises(CodecError):
            decode_trajectory(data[:cut])


def test_tampered_tensor_bytes_are_rejected():
    data = bytearray(encode_trajectory(make_traj()))
    data[-10] ^= 0xFF  # inside the tensor data
    with pytest.raises(CodecError, match="checksum"):
        decode_trajectory(bytes(data))


def test_tampered_header_field_is_rejected():
    data = encode_trajectory(make_traj())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    fields = json.loads(header["__metadata__"]["header"])
    fields["reward"] = 1.0  # someone edits the reward
    header["__metadata__"]["header"] = json.dumps(fields, sort_keys=True)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    with pytest.raises(CodecError, match="checksum"):
        decode_trajectory(struct.pack("<Q", len(new)) + new + data[8 + n :])


def test_wrong_schema_and_garbage_are_rejected():
    sd_blob = encode_state_dict({"w": torch.ones(2)})
    with pytest.raises(CodecError, match="schema"):
        decode_trajectory(sd_blob)
    with pytest.raises(CodecError):
        decode_trajectory(b"\x00" * 64)
    with pytest.raises(CodecError):
        decode_trajectory(b"not a record at all, just text")


def test_state_dict_round_trip_with_manifest():
    sd = {"a.lora_A.weight": torch.randn(4, 8), "a.lora_B.weight": torch.zeros(8, 4).bfloat16()}
    tensors, meta = decode_state_dict(encode_state_dict(sd, {"version": "3", "base": "m"}))
    assert meta == {"version": "3", "base": "m"}
    assert all(torch.equal(tensors[k], sd[k]) and tensors[k].dtype == sd[k].dtype for k in sd)


def _metadata(blob: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n])["__metadata__"]


def test_header_names_the_checksum_algorithm():
    meta = _metadata(encode_trajectory(make_traj()))
    assert meta["checksum"].startswith("xxh3-128:") and len(meta["checksum"]) == 9 + 32
    assert "sha256" not in meta


def test_unknown_checksum_algorithm_is_refused_by_name():
    data = encode_trajectory(make_traj())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["checksum"] = "md5:" + "0" * 32
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    with pytest.raises(CodecError, match="algorithm 'md5' is unknown"):
        decode_trajectory(struct.pack("<Q", len(new)) + new + data[8 + n :])


def test_blobs_written_with_sha256_still_decode():
    data = (DATA / "codec_sha256_trajectory.safetensors").read_bytes()
    assert "sha256" in _metadata(data) and "checksum" not in _metadata(data)
    old = decode_trajectory(data)
    want = make_traj()
    for f in ("latents", "positions", "steps", "timesteps", "log_probs"):
        assert getattr(old, f).dtype == getattr(want, f).dtype
        assert torch.equal(getattr(old, f), getattr(want, f)), f
    assert old.image.shape == (16, 16, 3) and old.image.dtype == torch.uint8
    assert (old.prompt, old.version, old.reward, old.sampler) == (
        want.prompt, want.version, want.reward, want.sampler
    )
    assert_same(old, decode_trajectory(encode_trajectory(old)))  # rewritten with xxh3

    tensors, meta = decode_state_dict((DATA / "codec_sha256_state_dict.safetensors").read_bytes())
    assert meta == {"version": "3", "base": "m"}
    expect = {
        "a.lora_A.weight": torch.arange(32, dtype=torch.float32).reshape(4, 8),
        "a.lora_B.weight": torch.zeros(8, 4).bfloat16(),
        "scalar": torch.tensor(3),
        "flag": torch.tensor([True, False]),
    }
    assert tensors.keys() == expect.keys()
    assert all(torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype
               for k, v in expect.items())


def test_tampered_sha256_blob_is_rejected():
    data = bytearray((DATA / "codec_sha256_trajectory.safetensors").read_bytes())
    data[-10] ^= 0x01
    with pytest.raises(CodecError, match="checksum"):
        decode_trajectory(bytes(data))


def test_decoded_tensors_are_writable_and_independent_of_the_bytes():
    orig = make_traj()
    data = encode_trajectory(orig)
    t = decode_trajectory(data)
    t.latents.add_(1)  # a writable copy: neither the blob nor a second decode sees it
    assert_same(decode_trajectory(data), orig)


def test_decoding_without_copy_views_the_bytes_it_was_given():
    orig = make_traj()
    data = encode_trajectory(orig)
    lo = np.frombuffer(data, dtype=np.uint8).ctypes.data  # where the bytes' memory starts
    inside = lambda t: lo <= t.data_ptr() < lo + len(data)  # noqa: E731
    view = decode_trajectory(data, copy=False)
    assert_same(view, orig)
    assert inside(view.latents) and inside(view.log_probs) and inside(view.image)
    assert not inside(decode_trajectory(data).latents)  # the default owns its memory


@pytest.mark.parametrize("copy", [True, False])
def test_decoded_tensors_start_their_own_storage_so_an_rng_state_loads(copy):
    # torch.set_rng_state reads the state tensor's storage from its start: a view into a
    # shared buffer at an offset was refused ("Invalid mt19937 state") or crashed the process
    state = torch.get_rng_state()
    blob = encode_state_dict({"weights": torch.randn(10), "rng": state})
    tensors, _ = decode_state_dict(blob)
    t = decode_trajectory(encode_trajectory(make_traj()), copy=copy)
    for x in (tensors["rng"], tensors["weights"], t.latents, t.log_probs, t.image):
        assert x.storage_offset() == 0
    torch.set_rng_state(tensors["rng"])
    assert torch.equal(torch.get_rng_state(), state)


def test_decoding_without_copy_copies_what_sits_at_an_odd_address():
    orig = make_traj()
    shifted = memoryview(bytearray(b"x") + encode_trajectory(orig))[1:]  # every tensor off by 1
    view = decode_trajectory(shifted, copy=False)
    assert_same(view, orig)
    for t in (view.latents, view.positions, view.log_probs):
        assert t.data_ptr() % t.element_size() == 0  # its own aligned copy


def test_checksum_names_algorithm_and_sees_every_bit():
    sd = {"w": torch.randn(8, 8), "b": torch.zeros(8).bfloat16()}
    c = checksum("adapter", "3", sd)
    assert c.startswith("xxh3-128:")
    assert c == checksum("adapter", "3", {k: v.clone() for k, v in sd.items()})
    assert c == checksum("adapter", "3", {"w": sd["w"].t().contiguous().t(), "b": sd["b"]})
    assert c != checksum("adapter", "4", sd)
    flipped = sd["w"].clone()
    flipped.view(torch.int32)[3, 5] ^= 1
    assert c != checksum("adapter", "3", {**sd, "w": flipped})
    assert c != checksum("adapter", "3", {"w": sd["w"], "b": sd["b"].half()})
    assert c != checksum("adapter", "3", {"w": sd["w"].reshape(4, 16), "b": sd["b"]})


def test_bytearray_and_memoryview_inputs_decode():
    orig = make_traj()
    data = encode_trajectory(orig)
    assert_same(decode_trajectory(bytearray(data)), orig)
    assert_same(decode_trajectory(memoryview(data)), orig)


def test_unsupported_dtype_is_a_clear_error():
    with pytest.raises(TypeError, match="dtype"):
        encode_state_dict({"q": torch.zeros(2, dtype=torch.complex128)})
