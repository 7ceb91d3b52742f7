"""``build_transform``: Dassl's transform names, fixed pipeline order and printed lines.

Whatever order ``INPUT.TRANSFORMS`` lists them in, the train pipeline runs
resize -> translation -> crop -> flip -> policies/colour -> to-tensor -> cutout
-> normalize -> noise/instance-norm, and the test pipeline runs
resize(smaller edge) -> center crop -> to-tensor -> normalize -> instance-norm.
"""
import random

import torch
from torchvision.transforms import (
    AutoAugment, AutoAugmentPolicy, CenterCrop, ColorJitter, Compose, GaussianBlur,
    InterpolationMode, Normalize, RandAugment, RandomApply, RandomCrop, RandomGrayscale,
    RandomHorizontalFlip, RandomResizedCrop, Resize, ToTensor,
)

from ...utils.tools import closest_match

AVAILABLE_TRANSFORMS = [
    "random_flip", "random_resized_crop", "normalize", "instance_norm", "random_crop",
    "random_translation", "center_crop", "cutout", "imagenet_policy", "cifar10_policy",
    "svhn_policy", "randaugment", "randaugment_fixmatch", "randaugment2", "gaussian_noise",
    "colorjitter", "randomgrayscale", "gaussian_blur",
]

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Random2DTranslation:
    """With probability ``p``, enlarge the image by 1/8 and crop back a random
    ``height x width`` window; otherwise just resize."""

    def __init__(self, height, width, p=0.5, interpolation=InterpolationMode.BILINEAR):
        self.height, self.width, self.p = height, width, p
        self.interpolation = interpolation

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return Resize((self.height, self.width), interpolation=self.interpolation)(img)
        new_w, new_h = int(round(self.width * 1.125)), int(round(self.height * 1.125))
        resized = Resize((new_h, new_w), interpolation=self.interpolation)(img)
        x1 = int(round(random.uniform(0, new_w - self.width)))
        y1 = int(round(random.uniform(0, new_h - self.height)))
        return resized.crop((x1, y1, x1 + self.width, y1 + self.height))


class Cutout:
    """Zero out ``n_holes`` square patches of side ``length`` in a CHW tensor."""

    def __init__(self, n_holes=1, length=16):
        self.n_holes, self.length = n_holes, length

    def __call__(self, img):
        h, w = img.shape[1], img.shape[2]
        mask = torch.ones(h, w, dtype=img.dtype)
        for _ in range(self.n_holes):
            y, x = random.randrange(h), random.randrange(w)
            y1, y2 = max(0, y - self.length // 2), min(h, y + self.length // 2)
            x1, x2 = max(0, x - self.length // 2), min(w, x + self.length // 2)
            mask[y1:y2, x1:x2] = 0
        return img * mask


class GaussianNoise:
    """Add N(mean, std) noise with probability ``p``."""

    def __init__(self, mean=0.0, std=0.15, p=0.5):
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img):
        if random.uniform(0, 1) > self.p:
            return img
        return img + torch.randn(img.size()) * self.std + self.mean


class InstanceNormalization:
    """Normalize each channel of one image to zero mean and unit std."""

    def __call__(self, img):
        c, h, w = img.shape
        flat = img.reshape(c, h * w)
        mean = flat.mean(1).view(c, 1, 1)
        std = flat.std(1).view(c, 1, 1)
        return (img - mean) / (std + 1e-8)


def _interpolation(cfg):
    name = cfg.INPUT.INTERPOLATION
    if name not in INTERPOLATION_MODES:
        raise KeyError(
            f"INPUT.INTERPOLATION must be one of {list(INTERPOLATION_MODES)}, but got {name!r}"
        )
    return INTERPOLATION_MODES[name]


def _check_choices(choices):
    for choice in choices:
        if choice not in AVAILABLE_TRANSFORMS:
            raise ValueError(
                f"Unknown transform {choice!r} in INPUT.TRANSFORMS (did you mean "
                f"{closest_match(choice, AVAILABLE_TRANSFORMS)!r}?). Valid names: "
                f"{AVAILABLE_TRANSFORMS}"
            )


def build_transform(cfg, is_train=True, choices=None):
    """Build the train or test transform of ``INPUT.TRANSFORMS`` (or ``choices``);
    returns None when ``INPUT.NO_TRANSFORM`` is set."""
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return None
    if choices is None:
        choices = cfg.INPUT.TRANSFORMS
    choices = list(choices)
    _check_choices(choices)
    expected_size = f"{cfg.INPUT.SIZE[0]}x{cfg.INPUT.SIZE[1]}"
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if is_train:
        return _build_transform_train(cfg, choices, expected_size, normalize)
    return _build_transform_test(cfg, choices, expected_size, normalize)


def _build_transform_train(cfg, choices, expected_size, normalize):
    print("Building transform_train")
    tfm = []
    interp = _interpolation(cfg)
    input_size = tuple(cfg.INPUT.SIZE)

    # A crop already yields the target size; otherwise resize first.
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        print(f"+ resize to {expected_size}")
        tfm.append(Resize(input_size, interpolation=interp))
    if "random_translation" in choices:
        print("+ random translation")
        tfm.append(Random2DTranslation(input_size[0], input_size[1], interpolation=interp))
    if "random_crop" in choices:
        pad = cfg.INPUT.CROP_PADDING
        print(f"+ random crop (padding = {pad})")
        tfm.append(RandomCrop(input_size, padding=pad))
    if "random_resized_crop" in choices:
        s_ = tuple(cfg.INPUT.RRCROP_SCALE)
        print(f"+ random resized crop (size={input_size}, scale={s_})")
        tfm.append(RandomResizedCrop(input_size, scale=s_, interpolation=interp))
    if "random_flip" in choices:
        print("+ random flip")
        tfm.append(RandomHorizontalFlip())
    for policy_name, policy in (("imagenet_policy", AutoAugmentPolicy.IMAGENET),
                                ("cifar10_policy", AutoAugmentPolicy.CIFAR10),
                                ("svhn_policy", AutoAugmentPolicy.SVHN)):
        if policy_name in choices:
            print(f"+ {policy_name.replace('_', ' ')}")
            tfm.append(AutoAugment(policy))
    n_, m_ = cfg.INPUT.RANDAUGMENT_N, cfg.INPUT.RANDAUGMENT_M
    if "randaugment" in choices:
        print(f"+ randaugment (n={n_}, m={m_})")
        tfm.append(RandAugment(num_ops=n_, magnitude=m_))
    if "randaugment_fixmatch" in choices:
        # torchvision's RandAugment stands in for Dassl's FixMatch variant.
        print(f"+ randaugment_fixmatch (n={n_})")
        tfm.append(RandAugment(num_ops=n_))
    if "randaugment2" in choices:
        print(f"+ randaugment2 (n={n_})")
        tfm.append(RandAugment(num_ops=n_))
    if "colorjitter" in choices:
        b_, c_ = cfg.INPUT.COLORJITTER_B, cfg.INPUT.COLORJITTER_C
        s_, h_ = cfg.INPUT.COLORJITTER_S, cfg.INPUT.COLORJITTER_H
        print(f"+ color jitter (brightness={b_}, contrast={c_}, saturation={s_}, hue={h_})")
        tfm.append(ColorJitter(brightness=b_, contrast=c_, saturation=s_, hue=h_))
    if "randomgrayscale" in choices:
        print(f"+ random gray scale (p={cfg.INPUT.RGS_P})")
        tfm.append(RandomGrayscale(p=cfg.INPUT.RGS_P))
    if "gaussian_blur" in choices:
        gb_k, gb_p = cfg.INPUT.GB_K, cfg.INPUT.GB_P
        print(f"+ gaussian blur (kernel={gb_k}, p={gb_p})")
        tfm.append(RandomApply([GaussianBlur(gb_k)], p=gb_p))

    print("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())

    if "cutout" in choices:
        cutout_n, cutout_len = cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN
        print(f"+ cutout (n_holes={cutout_n}, length={cutout_len})")
        tfm.append(Cutout(cutout_n, cutout_len))
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm.append(normalize)
    if "gaussian_noise" in choices:
        print(f"+ gaussian noise (mean={cfg.INPUT.GN_MEAN}, std={cfg.INPUT.GN_STD})")
        tfm.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm.append(InstanceNormalization())
    return Compose(tfm)


def _build_transform_test(cfg, choices, expected_size, normalize):
    print("Building transform_test")
    interp = _interpolation(cfg)
    input_size = tuple(cfg.INPUT.SIZE)
    tfm = []
    # Resize the smaller edge (keeps the aspect ratio), then always center-crop.
    print(f"+ resize the smaller edge to {max(input_size)}")
    tfm.append(Resize(max(input_size), interpolation=interp))
    print(f"+ {expected_size} center crop")
    tfm.append(CenterCrop(input_size))
    print("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())
    if "normalize" in choices:
        print(f"+ normalization (mean={cfg.INPUT.PIXEL_MEAN}, std={cfg.INPUT.PIXEL_STD})")
        tfm.append(normalize)
    if "instance_norm" in choices:
        print("+ instance normalization")
        tfm.append(InstanceNormalization())
    return Compose(tfm)
