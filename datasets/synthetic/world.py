"""A procedural image-text world: coloured shapes on backgrounds, with captions.

Every object has a colour and a shape, so a class name is a two-word phrase ("red star")
that a text encoder must compose, as CLIP does with real class names. A ``Domain`` says
how scenes look (backgrounds, noise, fill, size, clutter); the pretraining domain and the
shifted benchmark domain are two instances of it. Everything is drawn with PIL and numpy
from an explicit ``numpy.random.Generator``: the same generator state gives the same
image and caption, byte for byte.
"""
import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 112  # drawing size; CLIP's 224-px input is an upscaled copy (PIL bicubic)
SUPERSAMPLE = 2  # masks are drawn at twice the size and averaged down: smooth edges

# Well-separated hues; each name is one BPE token of CLIP's tokenizer.
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 60),
    "blue": (35, 75, 215),
    "purple": (130, 50, 180),
    "pink": (245, 125, 185),
    "brown": (120, 72, 35),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "moon", "arrow")

# Caption phrasings; "a photo of a {}." is the template zero-shot CLIP and the
# word-initialised prompts ("a photo of a") use.
TEMPLATES = (
    "a photo of a {colour} {shape}.",
    "a {colour} {shape}.",
    "{colour} {shape}",
    "a picture of a {colour} {shape}.",
    "an image of a {colour} {shape}.",
    "a drawing of a {colour} {shape}.",
    "a {shape} that is {colour}.",
    "the {shape} is {colour}.",
    "a {colour} {shape} on a {background} background.",
    "a photo of a {colour} {shape} on a {background} background.",
    # long phrasings, so that text positions up to ~20 (CoOp's 16 context words) are trained
    "there is one {colour} {shape} somewhere in this small picture, and nothing else.",
    "a simple flat drawing of a single {colour} {shape} on a plain {background} background.",
    "in this picture there is just one {colour} {shape}, drawn flat, and there is nothing else to see.",
)
# Prompt phrasings that the trainers' hand-made templates use (CLIP's prompt-engineering style) whose
# extra words say nothing about the image here: pretraining on them teaches the text encoder to read
# the class words through them, as a real CLIP does.
PROMPT_TEMPLATES = (
    "itap of a {}.", "a origami {}.", "a {} in a video game.", "art of the {}.", "a photo of the {}.",
    "a sculpture of a {}.", "a rendering of a {}.", "a drawing of the {}.", "a painting of a {}.",
    "a sketch of a {}.", "a toy {}.", "a cartoon {}.",
)
# Looks: in web captions, words such as "blurry", "close-up" or "faded" say how a picture looks, and
# CLIP's other template words are of this kind. Pretraining draws every second image with one of
# these looks and names it in the caption, so the text encoder has words for how an image looks, not
# only for what it shows: a prompt's context can then move the text features towards the look of a
# new domain, as it does with a real CLIP. "close-up" crops into the object, as the configs' random
# crops do; "faded" stops well short of the benchmark's washed-out light.
LOOKS = {
    "close-up": ("a close-up photo of a {}.", "a cropped photo of the {}.", "a close-up of a {}."),
    "blurry": ("a blurry photo of a {}.", "a blurry {}."),
    "noisy": ("a noisy photo of a {}.", "a bad photo of a {}.", "a grainy photo of the {}."),
    "dark": ("a dark photo of a {}.", "a dark photo of the {}."),
    "bright": ("a bright photo of a {}.", "a bright photo of the {}."),
    "faded": ("a faded photo of a {}.", "a pale {}.", "a washed-out photo of a {}."),
    "pixelated": ("a pixelated photo of a {}.", "a low resolution photo of a {}."),
    "small": ("a photo of the small {}.", "a small {}."),
    "large": ("a photo of the large {}.", "a big {}."),
}
LOOK_RADIUS = {"small": (0.16, 0.24), "large": (0.42, 0.46)}  # object radius, as Domain.radius
NOISY_SIGMA = (18.0, 40.0)  # the "noisy" look's pixel noise, as Domain.noise


def class_names():
    """Every colour-shape phrase, colour-major: "red circle", "red square", ..."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def parse_class_name(name):
    """("red", "star") from "red star"; a clear error for anything else."""
    parts = name.split()
    if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
        raise ValueError(f'"{name}" is not a class of the synthetic world: expected "<colour> <shape>" '
                         f"with a colour in {list(COLOURS)} and a shape in {list(SHAPES)}.")
    return parts[0], parts[1]


# ---------------------------------------------------------------------------------------------
# Shapes: outlines in unit coordinates (radius about 1, y pointing down), drawn into a mask
# ---------------------------------------------------------------------------------------------
def _regular(n, radius=1.0, phase=-math.pi / 2):
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star():
    return [(r * math.cos(-math.pi / 2 + math.pi * k / 5), r * math.sin(-math.pi / 2 + math.pi * k / 5))
            for k, r in zip(range(10), [1.0, 0.42] * 5)]


def _cross(half=0.34):
    a, b = half, 1.0
    return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a),
            (-b, -a), (-a, -a)]


def _heart(points=48):
    outline = []
    for k in range(points):
        t = 2 * math.pi * k / points
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        outline.append((x / 17, -y / 17 + 0.1))
    return outline


def _arrow():
    return [(-1.0, -0.28), (0.15, -0.28), (0.15, -0.75), (1.0, 0.0), (0.15, 0.75), (0.15, 0.28), (-1.0, 0.28)]


OUTLINES = {
    "square": _regular(4, 1.15, math.pi / 4),
    "triangle": [(x, y + 0.2) for x, y in _regular(3, 1.2)],
    "star": [(1.15 * x, 1.15 * y) for x, y in _star()],
    "cross": _cross(),
    "heart": _heart(),
    "arrow": _arrow(),
}


def _band(mask, width):
    """Pixels within ``width`` of the edge of a boolean mask: its dilation minus its erosion."""
    grown, shrunk = mask.copy(), mask.copy()
    for axis in (0, 1):
        wide, narrow = grown.copy(), shrunk.copy()
        for step in range(1, width + 1):
            for shift in (step, -step):  # objects never touch the border, so rolling is safe
                wide |= np.roll(grown, shift, axis)
                narrow &= np.roll(shrunk, shift, axis)
        grown, shrunk = wide, narrow
    return grown & ~shrunk


def shape_mask(shape, cx, cy, radius, angle, size=IMAGE_SIZE, outline=0):
    """Float masks in [0, 1] (size x size) of ``shape`` centred at (cx, cy), rotated by ``angle``:
    the filled shape, and a band ``outline`` pixels wide along its edge (None when 0)."""
    scale = SUPERSAMPLE
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = cx * scale, cy * scale, radius * scale
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "moon":  # a disc with an offset disc cut away
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.55 * r * math.cos(angle), cy + 0.55 * r * math.sin(angle)
        draw.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=0)
    else:
        c, s = math.cos(angle), math.sin(angle)
        points = [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in OUTLINES[shape]]
        draw.polygon(points, fill=255)
    full = np.asarray(canvas) > 127

    def downsample(mask):  # the mean of each scale x scale block: smooth edges
        return mask.reshape(size, scale, size, scale).mean(axis=(1, 3), dtype=np.float32)

    band = downsample(_band(full, outline * scale // 2)) if outline else None
    return downsample(full), band


# ---------------------------------------------------------------------------------------------
# Domains: how scenes look
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Domain:
    """The look of a family of scenes; every range is (low, high), sampled uniformly."""

    name: str
    radius: tuple = (0.28, 0.42)      # object radius, as a fraction of the image size
    offset: float = 0.08              # largest shift of the object's centre from the image centre
    max_angle: float = 15.0           # degrees of rotation either way (moons turn freely)
    backgrounds: tuple = ("plain", "gradient", "tinted")  # kinds, chosen uniformly
    noise: tuple = (0.0, 6.0)         # std of Gaussian pixel noise, in 0-255 units
    striped_fill: float = 0.0         # probability that the object is striped with a lighter tint
    distractors: tuple = (0, 0)       # number of small grey shapes around the object
    colour_jitter: float = 18.0       # per-channel jitter of the object colour
    outline: float = 1.0              # probability of a dark outline around the object
    outline_width: int = 2            # its width in pixels
    fade: float = 0.0                 # how far every colour is washed out towards its grey (0: none, 1: grey)


PRETRAIN = Domain("pretrain")
# The benchmark's shifted domain: a washed-out light that fades every colour 80% of the way to its
# grey, further than pretraining's "faded" look (30-60%) ever went. Chosen among other shifts
# (patterned backgrounds, noise, smaller objects): zero-shot stays clearly imperfect and its errors
# are near misses between colours, not confident mistakes, so tuning on a few shots can fix them; and
# the shift has words ("a faded photo of a"), so text prompts can move towards it.
BENCHMARK = Domain("benchmark", fade=0.8)
DOMAINS = {domain.name: domain for domain in (PRETRAIN, BENCHMARK)}


@dataclass
class Scene:
    """What one image shows; ``render`` draws it, ``caption`` describes it."""

    colour: str
    shape: str
    background: str      # the word a caption may use for the background ("white", "grey", "black") or None
    image: np.ndarray    # (H, W, 3) uint8
    look: str = None     # a key of LOOKS, or None for the domain's ordinary look

    @property
    def class_name(self):
        return f"{self.colour} {self.shape}"


def _grey_word(level):
    return "black" if level < 80 else ("grey" if level < 170 else "white")


def _muted(rng):
    """A desaturated random colour for busy backgrounds."""
    grey = rng.uniform(60, 200)
    tint = rng.uniform(-45, 45, size=3)
    return np.clip(grey + tint, 0, 255).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _grid(size):
    """Pixel coordinates (ys, xs) in [0, 1), shared by every drawing of this size."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def _background(rng, kind, size):
    ys, xs = _grid(size)
    if kind == "plain":
        level = rng.uniform(60, 255)
        return np.full((size, size, 3), level, np.float32), _grey_word(level)
    if kind == "gradient":
        a, b = (float(v) for v in rng.uniform(60, 255, size=2))
        angle = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle), 0, 1)
        levels = a + (b - a) * t
        return np.repeat(levels[..., None], 3, axis=2), _grey_word((a + b) / 2)
    first, second = _muted(rng), _muted(rng)
    if kind == "tinted":
        return np.broadcast_to(first, (size, size, 3)).copy(), None
    if kind == "stripes":
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.06, 0.2)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period
        pick = (np.floor(phase) % 2)[..., None]
    elif kind == "checker":
        period = rng.uniform(0.08, 0.25)
        pick = ((np.floor(xs / period) + np.floor(ys / period)) % 2)[..., None]
    elif kind == "blobs":
        pick = np.zeros((size, size, 1), np.float32)
        for _ in range(int(rng.integers(4, 9))):
            bx, by, br = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.25)
            pick[((xs - bx) ** 2 + (ys - by) ** 2 < br ** 2)] = 1.0
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return first * (1 - pick) + second * pick, None


def render(rng, colour, shape, domain=PRETRAIN, size=IMAGE_SIZE, look=None):
    """Draw one ``colour`` ``shape`` in ``domain``, with one of the LOOKS or none; returns a Scene.
    A look draws extra values from ``rng`` only when it is given: the benchmark's images (no look)
    do not depend on LOOKS."""
    if look is not None and look not in LOOKS:
        raise ValueError(f"unknown look {look!r}; choose from {', '.join(LOOKS)}")
    canvas, background = _background(rng, domain.backgrounds[int(rng.integers(len(domain.backgrounds)))], size)

    for _ in range(int(rng.integers(domain.distractors[0], domain.distractors[1] + 1))):
        other = SHAPES[int(rng.integers(len(SHAPES)))]
        r = rng.uniform(0.05, 0.09) * size
        mask = shape_mask(other, rng.uniform(r, size - r), rng.uniform(r, size - r), r,
                          rng.uniform(0, 2 * math.pi), size)[0][..., None]
        canvas = canvas * (1 - mask) + rng.uniform(70, 190) * mask

    radius = rng.uniform(*LOOK_RADIUS.get(look, domain.radius)) * size
    low, high = min(radius * 1.15, size / 2), max(size - radius * 1.15, size / 2)  # keep it in the picture
    cx, cy = (float(np.clip(size / 2 + rng.uniform(-domain.offset, domain.offset) * size, low, high))
              for _ in range(2))
    limit = math.radians(domain.max_angle)
    angle = rng.uniform(0, 2 * math.pi) if shape == "moon" else rng.uniform(-limit, limit)
    outlined = rng.uniform() < domain.outline
    mask, band = shape_mask(shape, cx, cy, radius, angle, size, domain.outline_width if outlined else 0)
    mask = mask[..., None]

    fill = np.clip(np.array(COLOURS[colour]) + rng.uniform(-1, 1, 3) * domain.colour_jitter, 0, 255).astype(np.float32)
    paint = np.broadcast_to(fill, canvas.shape)
    if rng.uniform() < domain.striped_fill:
        ys, xs = _grid(size)
        period = rng.uniform(0.04, 0.08)
        stripes = ((np.floor((xs + ys) / period) % 2) * np.float32(0.45))[..., None]
        paint = paint + (255 - paint) * stripes
    canvas = canvas * (1 - mask) + paint * mask
    if band is not None:
        band = band[..., None]
        canvas = canvas * (1 - band) + np.float32(rng.uniform(0, 40)) * band
    if domain.fade:  # the whole scene under a washed-out light
        grey = canvas.mean(axis=2, keepdims=True)
        canvas = grey + (canvas - grey) * np.float32(1 - domain.fade)
    if look is not None:
        canvas = _apply_look(rng, canvas, look, (cx, cy), radius)

    sigma = rng.uniform(*(NOISY_SIGMA if look == "noisy" else domain.noise))
    if sigma > 0:
        canvas = canvas + np.float32(sigma) * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(colour, shape, background, image, look)


def _apply_look(rng, canvas, look, centre, radius):
    """``canvas`` (float, H x W x 3) as it looks under ``look``; noise and sizes are drawn in render."""
    size = canvas.shape[0]
    if look == "dark":
        return canvas * np.float32(rng.uniform(0.25, 0.5))
    if look == "bright":
        return canvas + (255 - canvas) * np.float32(rng.uniform(0.35, 0.6))
    if look == "faded":
        grey = canvas.mean(axis=2, keepdims=True)
        return grey + (canvas - grey) * np.float32(1 - rng.uniform(0.3, 0.6))
    if look not in ("close-up", "blurry", "pixelated"):
        return canvas
    picture = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
    if look == "close-up":  # a square window into the object, as a random crop of the whole image
        side = rng.uniform(0.3, 0.65) * size
        x, y = (c + rng.uniform(-0.5, 0.5) * radius for c in centre)
        left, top = (float(np.clip(v - side / 2, 0, size - side)) for v in (x, y))
        picture = picture.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
    elif look == "blurry":
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 3.5)))
    else:
        coarse = int(rng.integers(14, 29))
        picture = picture.resize((coarse, coarse), Image.BOX).resize((size, size), Image.NEAREST)
    return np.asarray(picture, np.float32)


def caption(rng, scene, prompt_share=0.25):
    """A phrasing of ``scene``: a descriptive one, or (with probability ``prompt_share``) a prompt
    template around the class name. Background phrasings only where the background has a name. A
    scene drawn with a look is captioned with one of that look's phrasings."""
    if scene.look is not None:
        phrasings = LOOKS[scene.look]
        return phrasings[int(rng.integers(len(phrasings)))].format(scene.class_name)
    if rng.uniform() < prompt_share:
        return PROMPT_TEMPLATES[int(rng.integers(len(PROMPT_TEMPLATES)))].format(scene.class_name)
    templates = TEMPLATES if scene.background else [t for t in TEMPLATES if "{background}" not in t]
    template = templates[int(rng.integers(len(templates)))]
    return template.format(colour=scene.colour, shape=scene.shape, background=scene.background)


def random_scene(rng, domain=PRETRAIN, size=IMAGE_SIZE):
    """A scene of a uniformly drawn colour and shape."""
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    return render(rng, colour, shape, domain, size)


def to_pil(scene):
    return Image.fromarray(scene.image, "RGB")
