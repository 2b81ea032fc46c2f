"""The toy world's data: one coloured shape on a grey background, with captions.

Images are rendered in torch from signed-area tests on a 4x supersampled grid (anti-aliased,
identical on every machine), so 40k images take seconds and need no files. Everything is drawn
from a `torch.Generator` seeded per split, so a split is a pure function of (name, size, seed).

Captions come from templates and synonyms. Held-out templates never appear in training data; the
evaluation renders prompts with them to check that forgetting is not tied to one phrasing.

Colours are hues on a circle, not four fixed RGB values. World images take each colour's hue
+-HUE_SPREAD degrees, so the pipeline draws a range of reds (crimson to orange-red); "full-hue"
images take any hue, labelled with the nearest colour, so the judge and the reward CLIP are
defined between the colours too. (Defined, not smooth: the reward CLIP still scores hue in steps,
which is why the pipeline's captions carry colour noise, see `caption_noise`.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from critic_unlearn.vocabulary import Vocabulary

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
NONE = "none"  # the judge's extra class: a background without any shape

HUES = {"red": 0.0, "green": 128.0, "blue": 228.0, "yellow": 55.0}  # degrees, HSV hue
# world images: hue within +-spread of their colour's; red and yellow meet at 27.5 degrees
HUE_SPREAD = {"red": 12.0, "green": 16.0, "blue": 16.0, "yellow": 9.0}
SATURATION = (0.75, 0.9)
VALUE = (0.75, 0.95)
BACKGROUND = (60, 190)  # grey level range of the background
SIZE = (7.0, 10.0)  # shape "radius" in pixels (circle radius; others scaled to similar area)
MAX_ROTATION = 20.0  # degrees either way (squares stay squares, not diamonds)
IMAGE_SIZE = 32
SUPERSAMPLE = 4

COLOUR_SYNONYMS = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald"),
    "blue": ("blue", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "lemon"),
}
SHAPE_SYNONYMS = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "block"),
    "triangle": ("triangle", "triangular shape"),
    "cross": ("cross", "plus sign"),
}

# {c} = a colour word, {s} = a shape word. Phrase templates keep "{c} {s}" together, so they can
# be written with one "{}" slot (PromptsConfig.templates) for the prompt "red circle".
TRAIN_TEMPLATES = (
    "a {c} {s}",
    "{c} {s}",
    "a {c} {s} on grey",
    "a {c} {s} on a grey background",
    "a picture of a {c} {s}",
    "a drawing of a {c} {s}",
    "one {c} {s}",
    "a {s} that is {c}",
)
HELDOUT_TEMPLATES = (
    "an image of a {c} {s}",
    "a {c} {s} on a plain background",
    "the {s} is {c}",
)


def _article(text: str) -> str:
    """'a azure disc' -> 'an azure disc' (only the article 'a' before a vowel changes)."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def caption(template: str, colour_word: str, shape_word: str) -> str:
    return _article(template.format(c=colour_word, s=shape_word))


def canonical_prompt(colour: str, shape: str) -> str:
    """The prompt the quality gates and zero-shot classification use: 'a red circle'."""
    return f"a {colour} {shape}"


def phrase_templates(templates: tuple[str, ...]) -> list[str]:
    """Templates that keep '{c} {s}' together, as one-slot templates: 'a picture of a {}'."""
    return [t.replace("{c} {s}", "{}") for t in templates if "{c} {s}" in t]


# The words that name each colour and shape; the judge's classifier.json carries them ("words"),
# so the evaluation reads prompts with the judge's vocabulary (judge.save_judge writes it).
VOCABULARY = Vocabulary({"colour": COLOUR_SYNONYMS, "shape": SHAPE_SYNONYMS})


def parse_prompt(text: str) -> tuple[str | None, str | None]:
    """The (colour, shape) a prompt asks for, through synonyms; None where it names none.

    A prompt naming two colours or two shapes is ambiguous for the judge and is refused.
    """
    named = VOCABULARY.read(text)
    return named["colour"], named["shape"]


@dataclass(frozen=True)
class ShapeData:
    """N rendered images with their labels and one caption each."""

    images: Tensor  # (N, 32, 32, 3) uint8
    colour: Tensor  # (N,) int64 index into COLOURS; len(COLOURS) = none
    shape: Tensor  # (N,) int64 index into SHAPES; len(SHAPES) = none
    captions: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _inside(shape: str, x: Tensor, y: Tensor, size: Tensor) -> Tensor:
    """Membership of shape-frame points (x, y) (B, P) for shapes of radius `size` (B, 1)."""
    if shape == "circle":
        return x * x + y * y <= size * size
    if shape == "square":
        h = 0.886 * size  # same area as the circle of radius `size`
        return (x.abs() <= h) & (y.abs() <= h)
    if shape == "triangle":
        r = 1.3 * size  # circumradius; pointing up (y grows downwards in images)
        inside = y <= r / 2
        for k in (0, 1):  # the two slanted edges, as half-planes through the apex
            sx = 1.0 if k == 0 else -1.0
            nx, ny = sx * math.sqrt(3) / 2, -0.5  # outward normal of the edge
            inside &= nx * x + ny * y <= r / 2
        return inside
    if shape == "cross":
        arm, half = 1.1 * size, 0.38 * size
        return ((x.abs() <= arm) & (y.abs() <= half)) | ((x.abs() <= half) & (y.abs() <= arm))
    raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


EXTENT = {"circle": 1.0, "square": 1.26, "triangle": 1.3, "cross": 1.17}  # max |p| / size


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Hue in degrees, saturation and value in [0, 1] -> (B, 3) RGB in [0, 255]."""
    k = torch.stack([(5 + h / 60) % 6, (3 + h / 60) % 6, (1 + h / 60) % 6], dim=-1)  # (B, 3)
    f = v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))
    return 255 * f


def hue_distance(a: Tensor, b: Tensor) -> Tensor:
    d = (a - b).abs() % 360
    return torch.minimum(d, 360 - d)


def nearest_colour(hue: Tensor) -> Tensor:
    """(B,) hue in degrees -> (B,) index into COLOURS of the nearest colour's hue."""
    centres = torch.tensor([HUES[c] for c in COLOURS])
    return hue_distance(hue[:, None], centres[None, :]).argmin(dim=1)


def sample_hues(colour: Tensor, full_hue: Tensor, generator: torch.Generator) -> Tensor:
    """World hues (+-HUE_SPREAD around the colour's) or, where `full_hue`, any hue."""
    centres = torch.tensor([HUES[c] for c in COLOURS] + [0.0])
    spread = torch.tensor([HUE_SPREAD[c] for c in COLOURS] + [0.0])
    u = torch.rand(colour.shape[0], generator=generator)
    world = centres[colour] + spread[colour] * (2 * u - 1)
    return torch.where(full_hue, 360 * u, world) % 360


def render(
    hue: Tensor, shape: Tensor, generator: torch.Generator, size: int = IMAGE_SIZE
) -> Tensor:
    """(B,) hues (degrees), shape indices -> (B, size, size, 3) uint8; shape len(SHAPES) = none."""
    b = hue.shape[0]
    u = torch.rand(b, 7, generator=generator)  # size, cx, cy, angle, bg, saturation, value
    radius = SIZE[0] + (SIZE[1] - SIZE[0]) * u[:, 0]
    angle = math.radians(MAX_ROTATION) * (2 * u[:, 3] - 1)
    bg = BACKGROUND[0] + (BACKGROUND[1] - BACKGROUND[0]) * u[:, 4]

    n = size * SUPERSAMPLE
    grid = (torch.arange(n, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # pixel coordinates
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")
    gx, gy = gx.reshape(1, -1), gy.reshape(1, -1)  # (1, P)
    coverage = torch.zeros(b, n * n)
    for k, name in enumerate(SHAPES):
        idx = (shape == k).nonzero().flatten()
        if idx.numel() == 0:
            continue
        r = radius[idx, None]
        ext = EXTENT[name] * r + 1.0  # keep the whole shape inside the image
        cx = ext + (size - 2 * ext) * u[idx, 1, None]
        cy = ext + (size - 2 * ext) * u[idx, 2, None]
        cos, sin = angle[idx, None].cos(), angle[idx, None].sin()
        dx, dy = gx - cx, gy - cy
        x, y = cos * dx + sin * dy, -sin * dx + cos * dy  # rotate points into the shape frame
        coverage[idx] = _inside(name, x, y, r).float()
    cover = coverage.view(b, 1, n, n)
    cover = torch.nn.functional.avg_pool2d(cover, SUPERSAMPLE).view(b, size, size, 1)
    sat = SATURATION[0] + (SATURATION[1] - SATURATION[0]) * u[:, 5]
    val = VALUE[0] + (VALUE[1] - VALUE[0]) * u[:, 6]
    fg = hsv_to_rgb(hue, sat, val).view(b, 1, 1, 3)
    img = bg.view(b, 1, 1, 1) * (1 - cover) + fg * cover
    return img.round().clamp(0, 255).to(torch.uint8)


def make_split(
    n: int,
    seed: int,
    templates: tuple[str, ...] = TRAIN_TEMPLATES,
    none_fraction: float = 0.0,
    full_hue: bool = False,
    caption_noise: float = 0.0,
    chunk: int = 2048,
) -> ShapeData:
    """`n` images, the 16 (colour, shape) pairs equally often, captions from `templates`.

    `none_fraction` of the images show only background (labels none/none, caption ""): the
    judge learns to say "no shape" instead of guessing among the four. With `full_hue`, hues
    cover the whole circle and the colour label (and caption) is the nearest colour.

    `caption_noise`: that fraction of captions names a colour drawn uniformly from the four,
    whatever the image shows (labels stay true). A text-to-image model trained on them draws
    "a red S" in another colour now and then, as real models misdraw prompts: the exploration an
    RL unlearner needs. Its draws use their own generator, so images and labels do not change.
    """
    g = torch.Generator().manual_seed(seed)
    n_none = int(round(n * none_fraction))
    pairs = torch.arange(n - n_none) % (len(COLOURS) * len(SHAPES))
    colour = torch.cat([pairs // len(SHAPES), torch.full((n_none,), len(COLOURS))])
    shape = torch.cat([pairs % len(SHAPES), torch.full((n_none,), len(SHAPES))])
    perm = torch.randperm(n, generator=g)
    colour, shape = colour[perm], shape[perm]
    hue = sample_hues(colour, torch.full((n,), full_hue), g)
    if full_hue:
        colour = torch.where(colour < len(COLOURS), nearest_colour(hue), colour)
    images = torch.cat(
        [render(hue[i : i + chunk], shape[i : i + chunk], g) for i in range(0, n, chunk)]
    )
    t_idx = torch.randint(0, len(templates), (n,), generator=g).tolist()
    pick = torch.rand(n, 2, generator=g).tolist()
    word_colour = colour
    if caption_noise > 0:
        gn = torch.Generator().manual_seed(seed * 7919 + 17)
        flip = torch.rand(n, generator=gn) < caption_noise
        other = torch.randint(0, len(COLOURS), (n,), generator=gn)
        word_colour = torch.where(flip & (colour < len(COLOURS)), other, colour)
    captions = []
    for i in range(n):
        c, s = int(word_colour[i]), int(shape[i])
        if c == len(COLOURS):
            captions.append("")
            continue
        cw = COLOUR_SYNONYMS[COLOURS[c]]
        sw = SHAPE_SYNONYMS[SHAPES[s]]
        # the plain word half the time, so canonical prompts are the best learned
        cword = cw[0] if pick[i][0] < 0.5 else cw[int(pick[i][0] * 2 * len(cw)) % len(cw)]
        sword = sw[0] if pick[i][1] < 0.5 else sw[int(pick[i][1] * 2 * len(sw)) % len(sw)]
        captions.append(caption(templates[t_idx[i]], cword, sword))
    return ShapeData(images, colour, shape, captions)


def concat(*parts: ShapeData) -> ShapeData:
    return ShapeData(
        torch.cat([p.images for p in parts]),
        torch.cat([p.colour for p in parts]),
        torch.cat([p.shape for p in parts]),
        [c for p in parts for c in p.captions],
    )


def pair_names() -> list[tuple[str, str]]:
    """The 16 (colour, shape) pairs in a fixed order: red circle, red square, ..."""
    return [(c, s) for c in COLOURS for s in SHAPES]
