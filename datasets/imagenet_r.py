"""ImageNet-R: imagenet-rendition/imagenet-r/<wnid>/* (200 classes) + the 1,000-line classnames.txt."""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetTestVariant


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetTestVariant):
    config_name = "imagenet_r"
    folder = "imagenet-rendition"
    image_subdir = "imagenet-r"
    published = dict(classes=200, test=30000)
