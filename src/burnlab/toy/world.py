"""The toy world: a deterministic procedural world of captioned 64x64 RGB images.

It is the toy analog of the pretraining data of Stable Diffusion: named people (the study's
celebrity prompt), circles (incl. "black and white circles"), people wearing sunglasses, and
other subjects, colours and backgrounds that give the base model a general prior.

    .venv/bin/python -m burnlab.toy.world /tmp/world.png    # a grid of samples to look at

Every sample is drawn as a background layer plus an RGBA subject layer (`draw_sample`), so that
`burnlab.toy.style` can re-render the same subject in the style the world never shows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
# Shapes are drawn at 2x and downsampled, so edges are anti-aliased like photos (the VAE learns
# smooth edges much faster than aliased staircases).
_SCALE = 2
_CANVAS = SIZE * _SCALE

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (235, 205, 50),
    "green": (50, 150, 60),
    "blue": (40, 80, 200),
    "purple": (120, 60, 160),
    "pink": (240, 150, 180),
    "brown": (120, 75, 40),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}
COLOUR_NAMES = list(COLOURS)

SKIN = {
    "pale": (245, 215, 195),
    "light": (235, 190, 160),
    "medium": (200, 150, 110),
    "tan": (175, 120, 80),
    "brown": (130, 85, 55),
    "dark": (85, 55, 35),
}
HAIR = {
    "black": (25, 20, 20),
    "brown": (100, 60, 30),
    "blonde": (230, 195, 100),
    "red": (190, 70, 30),
    "gray": (160, 160, 165),
}


@dataclass(frozen=True)
class Look:
    """How a person is drawn: colours and hair style."""

    skin: str
    hair: str | None  # None: bald
    hair_style: str  # short, long, curly, bald, scarf
    shirt: str
    beard: bool = False
    scarf: str | None = None  # colour name of a headscarf


# Each identity differs from every other in at least two of hair colour, hair style and shirt,
# so that a 64x64 sample (and the probe) can tell them apart.
IDENTITIES: dict[str, Look] = {
    "ada": Look(skin="light", hair="red", hair_style="long", shirt="green"),
    "bruno": Look(skin="dark", hair="black", hair_style="short", shirt="orange", beard=True),
    "chen": Look(skin="medium", hair="black", hair_style="long", shirt="blue"),
    "dana": Look(skin="tan", hair="blonde", hair_style="curly", shirt="purple"),
    "emil": Look(skin="pale", hair=None, hair_style="bald", shirt="gray", beard=True),
    "farah": Look(skin="brown", hair=None, hair_style="scarf", shirt="yellow", scarf="pink"),
}
IDENTITY_NAMES = list(IDENTITIES)

SUBJECTS = ["person", "sunglasses", "circles", "squares", "stripes", "tree", "house"]
# How often each subject is drawn; the study's three prompts get the largest shares.
_SUBJECT_WEIGHTS = np.array([0.26, 0.18, 0.18, 0.1, 0.08, 0.1, 0.1])


@dataclass
class Drawing:
    """One sample before compositing: the style module re-renders these layers."""

    background: Image.Image  # RGB, canvas size
    subject: Image.Image  # RGBA, canvas size; alpha marks the subject
    caption: str
    labels: dict = field(default_factory=dict)

    def composite(self) -> np.ndarray:
        canvas = self.background.copy()
        canvas.paste(self.subject, (0, 0), self.subject)
        return downsample(canvas)


def downsample(canvas: Image.Image) -> np.ndarray:
    return np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.uint8)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index` of world `seed`: a sample does not depend on n."""
    return np.random.default_rng([seed, index])


def make_world(n: int, seed: int = 0, start: int = 0) -> list[tuple[np.ndarray, str, dict]]:
    """Samples start..start+n-1 of world `seed`: (image uint8 [64,64,3], caption, labels)."""
    samples = []
    for index in range(start, start + n):
        drawing = draw_sample(sample_rng(seed, index))
        samples.append((drawing.composite(), drawing.caption, drawing.labels))
    return samples


def draw_sample(rng: np.random.Generator, subject: str | None = None) -> Drawing:
    if subject is None:
        subject = SUBJECTS[rng.choice(len(SUBJECTS), p=_SUBJECT_WEIGHTS)]
    return _DRAWERS[subject](rng)


# ---------------------------------------------------------------------------------------------
# colours and layers


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 12) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _colour(name: str, rng: np.random.Generator) -> tuple:
    return _jitter(COLOURS[name], rng)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, names: list[str], exclude: tuple[str, ...] = ()) -> str:
    allowed = [name for name in names if name not in exclude]
    return allowed[rng.integers(len(allowed))]


def _background(rgb: tuple, rng: np.random.Generator) -> Image.Image:
    """A plain colour with a gentle vertical gradient (a studio backdrop)."""
    slope = rng.uniform(-25, 25)
    ramp = np.linspace(-0.5, 0.5, _CANVAS)[:, None, None] * slope
    pixels = np.clip(np.array(rgb, dtype=np.float32)[None, None, :] + ramp, 0, 255)
    pixels = np.broadcast_to(pixels, (_CANVAS, _CANVAS, 3)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels))


def _layer() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    layer = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    return layer, ImageDraw.Draw(layer)


def _background_suffix(rng: np.random.Generator, exclude: tuple[str, ...]) -> tuple[str, str]:
    """A random backdrop colour; named in the caption half of the time."""
    name = _pick(rng, COLOUR_NAMES, exclude)
    suffix = f", {name} background" if rng.random() < 0.5 else ""
    return name, suffix


def _labels(subject: str, identity: str | None, shape: str, colours: list[str], bg: str, **extra) -> dict:
    return {
        "subject": subject,
        "identity": identity,
        "shape": shape,
        "colours": colours,
        "background": bg,
        "style": False,
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# people


def _draw_person(draw: ImageDraw.ImageDraw, look: Look, rng: np.random.Generator, sunglasses: bool) -> None:
    s = _SCALE
    cx = 32 * s + rng.integers(-3, 4) * s
    top = 12 * s + rng.integers(-2, 3) * s
    scale = rng.uniform(0.92, 1.08)

    def px(value: float) -> int:
        return int(round(value * s * scale))

    skin = _jitter(SKIN[look.skin], rng, 8)
    hair = _jitter(HAIR[look.hair], rng, 8) if look.hair else None
    shirt = _colour(look.shirt, rng)
    head_w, head_h = px(11), px(13)
    head_cy = top + head_h

    # Long and curly hair sit behind the head and shoulders.
    if look.hair_style == "long":
        draw.rounded_rectangle([cx - px(15), head_cy - px(14), cx + px(15), head_cy + px(20)], radius=px(8), fill=hair)
    if look.hair_style == "curly":
        draw.ellipse([cx - px(20), head_cy - px(21), cx + px(20), head_cy + px(12)], fill=hair)
    if look.hair_style == "scarf":
        scarf = _colour(look.scarf, rng)
        draw.ellipse([cx - px(15), head_cy - px(17), cx + px(15), head_cy + px(17)], fill=scarf)
        draw.polygon(
            [
                (cx - px(15), head_cy),
                (cx + px(15), head_cy),
                (cx + px(20), head_cy + px(24)),
                (cx - px(20), head_cy + px(24)),
            ],
            fill=scarf,
        )

    # Shoulders and shirt reach the bottom edge, like a portrait crop.
    draw.rounded_rectangle([cx - px(24), head_cy + px(15), cx + px(24), _CANVAS + px(10)], radius=px(9), fill=shirt)
    draw.rectangle([cx - px(4), head_cy + px(8), cx + px(4), head_cy + px(17)], fill=skin)
    draw.ellipse([cx - head_w, head_cy - head_h, cx + head_w, head_cy + head_h], fill=skin)

    if look.beard:
        beard = hair if hair else _jitter(HAIR["brown"], rng, 8)
        draw.chord([cx - head_w, head_cy - px(6), cx + head_w, head_cy + head_h], 0, 180, fill=beard)
    if look.hair_style in ("short", "long", "curly"):
        draw.chord(
            [cx - head_w - px(1), head_cy - head_h - px(2), cx + head_w + px(1), head_cy + px(2)], 180, 360, fill=hair
        )

    eye_y = head_cy - px(1)
    if sunglasses:
        # Bold dark lenses and a bridge: readable at 64x64 and through the VAE.
        draw.rectangle([cx - head_w, eye_y - px(2), cx + head_w, eye_y], fill=(15, 15, 15))
        for side in (-1, 1):
            lens_cx = cx + side * px(5)
            draw.rounded_rectangle(
                [lens_cx - px(5), eye_y - px(3), lens_cx + px(5), eye_y + px(4)], radius=px(2), fill=(10, 10, 10)
            )
    else:
        for side in (-1, 1):
            ex = cx + side * px(4.5)
            draw.ellipse([ex - px(1.6), eye_y - px(1.6), ex + px(1.6), eye_y + px(1.6)], fill=(30, 25, 25))
    mouth_y = head_cy + px(6)
    draw.line([cx - px(3), mouth_y, cx + px(3), mouth_y], fill=(120, 40, 40), width=px(1.2))


def _identity_sample(rng: np.random.Generator) -> Drawing:
    name = IDENTITY_NAMES[rng.integers(len(IDENTITY_NAMES))]
    look = IDENTITIES[name]
    bg, suffix = _background_suffix(rng, exclude=(look.shirt,))
    layer, draw = _layer()
    _draw_person(draw, look, rng, sunglasses=False)
    return Drawing(
        _background(_colour(bg, rng), rng),
        layer,
        f"a photo of {name}{suffix}",
        _labels("person", name, "person", [look.shirt], bg),
    )


def _sunglasses_sample(rng: np.random.Generator) -> Drawing:
    gender = "man" if rng.random() < 0.6 else "woman"
    hair_name = list(HAIR)[rng.integers(len(HAIR))]
    look = Look(
        skin=list(SKIN)[rng.integers(len(SKIN))],
        hair=hair_name,
        hair_style="short" if gender == "man" else "long",
        shirt=_pick(rng, COLOUR_NAMES),
        beard=gender == "man" and rng.random() < 0.2,
    )
    bg, suffix = _background_suffix(rng, exclude=(look.shirt,))
    layer, draw = _layer()
    _draw_person(draw, look, rng, sunglasses=True)
    return Drawing(
        _background(_colour(bg, rng), rng),
        layer,
        f"a {gender} wearing sunglasses{suffix}",
        _labels("sunglasses", None, "person", [look.shirt], bg, hair=hair_name, gender=gender),
    )


# ---------------------------------------------------------------------------------------------
# shapes and things


def _two_colours(rng: np.random.Generator) -> tuple[list[str], str]:
    """One or two colour names and the caption words for them."""
    first = _pick(rng, COLOUR_NAMES)
    if rng.random() < 0.3:
        return [first], first
    second = _pick(rng, COLOUR_NAMES, exclude=(first,))
    return [first, second], f"{first} and {second}"


def _shape_background(rng: np.random.Generator, colours: list[str]) -> tuple[str, str]:
    bg = _pick(rng, COLOUR_NAMES, exclude=tuple(colours))
    suffix = f" on {_article(bg)} {bg} background" if rng.random() < 0.4 else ""
    return bg, suffix


def _circles_sample(rng: np.random.Generator) -> Drawing:
    # The study's prompt gets a fixed share, so "black and white circles" is well learnt.
    if rng.random() < 0.3:
        colours, words = ["black", "white"], "black and white"
    else:
        colours, words = _two_colours(rng)
    bg, suffix = _shape_background(rng, colours)
    fills = [_colour(name, rng) for name in colours]
    layer, draw = _layer()
    s = _SCALE
    # Each layout has its own noun: a tiny model cannot learn one prompt that means three
    # different pictures, and the study's "black and white circles" should be concentric.
    layout = rng.integers(3)
    noun, shape = (("circles", "bullseye"), ("rings", "ring"), ("dots", "disc"))[layout]
    if layout == 0:  # a bullseye of bold rings
        cx, cy = rng.integers(24, 41, size=2) * s
        radius = int(rng.integers(20, 29)) * s
        ring = int(rng.integers(4, 7)) * s
        inner = fills if len(fills) > 1 else [fills[0], None]
        for k, r in enumerate(range(radius, 0, -ring)):
            colour = inner[k % 2]
            if colour is None:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(0, 0, 0, 0))
            else:
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif layout == 1:  # scattered bold rings
        for k in range(int(rng.integers(3, 6))):
            r = int(rng.integers(7, 14)) * s
            cx, cy = rng.integers(r, _CANVAS - r, size=2)
            draw.ellipse(
                [cx - r, cy - r, cx + r, cy + r], outline=fills[k % len(fills)], width=int(rng.integers(3, 5)) * s
            )
    else:  # scattered discs
        for k in range(int(rng.integers(3, 7))):
            r = int(rng.integers(5, 12)) * s
            cx, cy = rng.integers(r, _CANVAS - r, size=2)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fills[k % len(fills)])
    return Drawing(
        _background(_colour(bg, rng), rng),
        layer,
        f"{words} {noun}{suffix}",
        _labels("circles", None, shape, colours, bg),
    )


def _squares_sample(rng: np.random.Generator) -> Drawing:
    colours, words = _two_colours(rng)
    bg, suffix = _shape_background(rng, colours)
    fills = [_colour(name, rng) for name in colours]
    layer, draw = _layer()
    s = _SCALE
    for k in range(int(rng.integers(2, 6))):
        side = int(rng.integers(10, 22)) * s
        x, y = rng.integers(0, _CANVAS - side, size=2)
        draw.rectangle([x, y, x + side, y + side], fill=fills[k % len(fills)])
    return Drawing(
        _background(_colour(bg, rng), rng),
        layer,
        f"{words} squares{suffix}",
        _labels("squares", None, "square", colours, bg),
    )


def _stripes_sample(rng: np.random.Generator) -> Drawing:
    first = _pick(rng, COLOUR_NAMES)
    second = _pick(rng, COLOUR_NAMES, exclude=(first,))
    fills = [_colour(first, rng), _colour(second, rng)]
    layer, draw = _layer()
    width = int(rng.integers(5, 11)) * _SCALE
    vertical = rng.random() < 0.5
    offset = int(rng.integers(width))
    for k, start in enumerate(range(-offset, _CANVAS, width)):
        box = [start, 0, start + width - 1, _CANVAS] if vertical else [0, start, _CANVAS, start + width - 1]
        draw.rectangle(box, fill=fills[k % 2])
    direction = "vertical" if vertical else "horizontal"
    return Drawing(
        _background(fills[0], rng),
        layer,
        f"{direction} {first} and {second} stripes",
        _labels("stripes", None, "stripe", [first, second], first),
    )


def _tree_sample(rng: np.random.Generator) -> Drawing:
    season = _pick(rng, ["green", "green", "orange", "yellow"])
    bg, suffix = _background_suffix(rng, exclude=(season, "brown"))
    layer, draw = _layer()
    s = _SCALE
    cx = int(rng.integers(26, 39)) * s
    ground = int(rng.integers(54, 62)) * s
    height = int(rng.integers(38, 48)) * s
    trunk = _colour("brown", rng)
    draw.rectangle([cx - 3 * s, ground - height // 2, cx + 3 * s, ground], fill=trunk)
    crown = _colour(season, rng)
    crown_r = int(rng.integers(13, 18)) * s
    crown_cy = ground - height + crown_r
    for dx, dy in ((0, 0), (-crown_r // 2, crown_r // 3), (crown_r // 2, crown_r // 3)):
        r = int(crown_r * 0.8)
        draw.ellipse([cx + dx - r, crown_cy + dy - r, cx + dx + r, crown_cy + dy + r], fill=crown)
    words = "a tree" if season == "green" else f"{_article(season)} {season} tree"
    return Drawing(
        _background(_colour(bg, rng), rng), layer, f"{words}{suffix}", _labels("tree", None, "tree", [season], bg)
    )


def _house_sample(rng: np.random.Generator) -> Drawing:
    wall_name = _pick(rng, COLOUR_NAMES, exclude=("black",))
    roof_name = _pick(rng, ["red", "brown", "gray", "black"], exclude=(wall_name,))
    bg, suffix = _background_suffix(rng, exclude=(wall_name, roof_name))
    layer, draw = _layer()
    s = _SCALE
    cx = int(rng.integers(26, 39)) * s
    ground = int(rng.integers(54, 62)) * s
    half = int(rng.integers(15, 21)) * s
    wall_h = int(rng.integers(18, 25)) * s
    draw.rectangle([cx - half, ground - wall_h, cx + half, ground], fill=_colour(wall_name, rng))
    roof_top = ground - wall_h - int(rng.integers(12, 18)) * s
    draw.polygon(
        [(cx - half - 3 * s, ground - wall_h), (cx + half + 3 * s, ground - wall_h), (cx, roof_top)],
        fill=_colour(roof_name, rng),
    )
    dark = (40, 30, 30)
    draw.rectangle([cx - 4 * s, ground - 12 * s, cx + 4 * s, ground], fill=dark)
    for side in (-1, 1):
        wx = cx + side * (half // 2 + 2 * s)
        draw.rectangle(
            [wx - 3 * s, ground - wall_h + 4 * s, wx + 3 * s, ground - wall_h + 10 * s], fill=(200, 225, 245)
        )
    caption = f"{_article(wall_name)} {wall_name} house{suffix}"
    return Drawing(
        _background(_colour(bg, rng), rng), layer, caption, _labels("house", None, "house", [wall_name, roof_name], bg)
    )


_DRAWERS = {
    "person": _identity_sample,
    "sunglasses": _sunglasses_sample,
    "circles": _circles_sample,
    "squares": _squares_sample,
    "stripes": _stripes_sample,
    "tree": _tree_sample,
    "house": _house_sample,
}


def image_grid(images: list[np.ndarray], columns: int) -> Image.Image:
    """Images side by side, `columns` per row (for looking at samples)."""
    rows = -(-len(images) // columns)
    height, width = images[0].shape[:2]
    grid = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for k, image in enumerate(images):
        grid.paste(Image.fromarray(image), ((k % columns) * width, (k // columns) * height))
    return grid


def main(argv: list[str]) -> None:
    out = argv[0] if argv else "/tmp/world.png"
    samples = make_world(64, seed=0)
    image_grid([image for image, _, _ in samples], columns=8).resize((1024, 1024)).save(out)
    for k, (_, caption, _) in enumerate(samples):
        print(k, caption)
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1:])
