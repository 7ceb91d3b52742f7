"""ImageNet-Sketch: imagenet-sketch/images/<wnid>/* + classnames.txt."""
from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetTestVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetTestVariant):
    config_name = "imagenet_sketch"
    folder = "imagenet-sketch"
    image_subdir = "images"
    published = dict(classes=1000, test=50889)
