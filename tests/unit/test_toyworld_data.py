"""The toy world's data: deterministic, balanced, captions that parse back to their labels."""

from __future__ import annotations

import pytest
import torch

from critic_unlearn.diffusion.tiny import clip_tokenizer
from critic_unlearn.toyworld.data import (
    COLOUR_SYNONYMS,
    COLOURS,
    HELDOUT_TEMPLATES,
    HUES,
    SHAPE_SYNONYMS,
    SHAPES,
    TRAIN_TEMPLATES,
    caption,
    hsv_to_rgb,
    make_split,
    nearest_colour,
    parse_prompt,
    phrase_templates,
    sample_hues,
)


def test_split_is_a_pure_function_of_its_seed() -> None:
    a, b, c = make_split(96, seed=7), make_split(96, seed=7), make_split(96, seed=8)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)


def test_pairs_are_balanced_and_none_images_are_blank() -> None:
    d = make_split(16 * 10 + 8, seed=1, none_fraction=8 / 168)
    pairs = d.colour[d.colour < 4] * 4 + d.shape[d.colour < 4]
    assert torch.bincount(pairs, minlength=16).tolist() == [10] * 16
    blank = d.images[d.colour == len(COLOURS)]
    assert len(blank) == 8
    assert (blank.amax(dim=(1, 2)) == blank.amin(dim=(1, 2))).all()  # one grey, no shape
    assert all(c == "" for c, k in zip(d.captions, d.colour, strict=True) if k == len(COLOURS))


def test_shapes_stay_inside_the_image_and_have_the_colour_of_their_label() -> None:
    d = make_split(256, seed=2)
    border = torch.cat([d.images[:, 0], d.images[:, -1], d.images[:, :, 0], d.images[:, :, -1]], 1)
    assert (border.float().std(dim=(1, 2)) < 1.0).all()  # only background on the border
    centre_rgb = d.images.float().reshape(256, -1, 3)
    grey = d.images[:, 0, 0].float()  # background shade
    far = (centre_rgb - grey[:, None]).abs().sum(-1).argmax(-1)  # most shape-like pixel
    fg = centre_rgb[torch.arange(256), far]
    assert (fg[d.colour == 0, 0] > 150).all()  # red: strong red channel
    assert (fg[d.colour == 2, 2] > 150).all()  # blue


def test_captions_parse_back_to_labels_and_respect_the_template_split() -> None:
    train = make_split(400, seed=3)
    for text, c, s in zip(train.captions, train.colour, train.shape, strict=True):
        assert parse_prompt(text) == (COLOURS[c], SHAPES[s]), text
    held = make_split(200, seed=4, templates=HELDOUT_TEMPLATES)
    train_set = set(train.captions)
    assert not train_set & set(held.captions)
    assert {parse_prompt(t) for t in held.captions} <= {(c, s) for c in COLOURS for s in SHAPES}


def test_every_caption_fits_the_16_token_context() -> None:
    tok = clip_tokenizer(16)
    longest = max(
        len(tok(caption(t, cw, sw)).input_ids)
        for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES
        for cws in COLOUR_SYNONYMS.values()
        for cw in cws
        for sws in SHAPE_SYNONYMS.values()
        for sw in sws
    )
    assert longest <= 16


def test_parse_prompt_handles_synonyms_partial_prompts_and_ambiguity() -> None:
    assert parse_prompt("an azure round shape") == ("blue", "circle")
    assert parse_prompt("a crimson plus sign on grey") == ("red", "cross")
    assert parse_prompt("red") == ("red", None)
    assert parse_prompt("a circle") == (None, "circle")
    with pytest.raises(ValueError, match="several colour classes"):
        parse_prompt("a red and blue circle")
    assert caption("a {c} {s}", "azure", "disc") == "an azure disc"
    assert phrase_templates(("a {c} {s} on grey", "the {s} is {c}")) == ["a {} on grey"]


def test_world_hues_stay_on_their_colours_side_and_full_hues_cover_the_circle() -> None:
    g = torch.Generator().manual_seed(0)
    colour = torch.arange(4000) % len(COLOURS)
    world = sample_hues(colour, torch.zeros(4000, dtype=torch.bool), g)
    assert torch.equal(nearest_colour(world), colour)  # never across a colour boundary
    full = sample_hues(colour, torch.ones(4000, dtype=torch.bool), g)
    assert torch.histc(full, bins=12, min=0, max=360).min() > 200  # roughly uniform
    d = make_split(200, seed=5, full_hue=True)
    assert set(d.colour.tolist()) == set(range(len(COLOURS)))
    for text, c in zip(d.captions, d.colour, strict=True):
        assert parse_prompt(text)[0] == COLOURS[c]


def test_hsv_to_rgb_puts_each_colour_on_its_channel() -> None:
    hues = torch.tensor([HUES[c] for c in COLOURS])
    rgb = hsv_to_rgb(hues, torch.full((4,), 0.85), torch.full((4,), 0.9))
    red, green, blue, yellow = rgb
    assert red.argmax() == 0 and green.argmax() == 1 and blue.argmax() == 2
    assert yellow[0] > 150 and yellow[1] > 150 and yellow[2] < 60


def test_caption_noise_changes_only_caption_colours_at_the_asked_rate() -> None:
    clean = make_split(4000, seed=3, none_fraction=0.05)
    noisy = make_split(4000, seed=3, none_fraction=0.05, caption_noise=0.2)
    assert torch.equal(noisy.images, clean.images) and torch.equal(noisy.colour, clean.colour)
    assert torch.equal(noisy.shape, clean.shape)
    said = [parse_prompt(t)[0] if t else None for t in noisy.captions]
    wrong = [s != COLOURS[c] for s, c in zip(said, clean.colour, strict=True) if s is not None]
    # a random colour 20% of the time is the true one a quarter of those times: ~15% wrong
    assert 0.12 < sum(wrong) / len(wrong) < 0.18
    assert [parse_prompt(t)[1] if t else None for t in noisy.captions] == [
        parse_prompt(t)[1] if t else None for t in clean.captions
    ]
