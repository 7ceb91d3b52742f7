"""ImageNet-A: imagenet-adversarial/imagenet-a/<wnid>/* (200 classes) + the 1,000-line classnames.txt."""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetTestVariant


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetTestVariant):
    config_name = "imagenet_a"
    folder = "imagenet-adversarial"
    image_subdir = "imagenet-a"
    published = dict(classes=200, test=7500)
