"""The backbone decides the image preprocessing; the config's stock CLIP values give way to it.

The shipped configs carry OpenAI CLIP's preprocessing (224 px, CLIP's mean and std, bicubic).
For a backbone that expects other values (SigLIP: mean and std 0.5, 384 px, ...) those stock
values are replaced by the backbone's, with a note in the log. A value set to anything else is
the user's choice: it is used as set, with a note where it disagrees with the backbone, except an
image size a transformer tower cannot take (its position embeddings fix the number of patches).
"""
from .interface import CLIP_MEAN, CLIP_STD

STOCK = {"SIZE": (224, 224), "PIXEL_MEAN": CLIP_MEAN, "PIXEL_STD": CLIP_STD, "INTERPOLATION": "bicubic"}


def same(a, b):
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b))


def adopt_preprocessing(cfg, preprocessing, fixed_size=True):
    """Set cfg.INPUT from the backbone's ``preprocessing`` where the config holds stock CLIP values."""
    wanted = {"SIZE": (preprocessing.size, preprocessing.size), "PIXEL_MEAN": tuple(preprocessing.mean),
              "PIXEL_STD": tuple(preprocessing.std), "INTERPOLATION": preprocessing.interpolation}
    changes = {}
    for key, value in wanted.items():
        current = cfg.INPUT[key]
        if same(current, value):
            continue
        if same(current, STOCK[key]):
            print(f"Note: INPUT.{key} {format_value(current)} (the config's CLIP default) is replaced by the "
                  f"backbone's {format_value(value)}")
            changes[key] = list(value) if key != "INTERPOLATION" else value
        elif key == "SIZE" and fixed_size:
            raise ValueError(f"INPUT.SIZE is {tuple(current)} but the CLIP backbone takes {preprocessing.size}x"
                             f"{preprocessing.size} images; set INPUT.SIZE ({preprocessing.size}, "
                             f"{preprocessing.size}).")
        else:
            print(f"Note: INPUT.{key} is {format_value(current)} as set, though the backbone was trained with "
                  f"{format_value(value)}")
    if changes:
        frozen = cfg.is_frozen()
        cfg.defrost()
        for key, value in changes.items():
            cfg.INPUT[key] = value
        if frozen:
            cfg.freeze()
    return changes


def format_value(value):
    if isinstance(value, str):
        return value
    return "(" + ", ".join(f"{float(v):g}" if isinstance(v, float) else str(v) for v in value) + ")"
