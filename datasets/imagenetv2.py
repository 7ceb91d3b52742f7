"""ImageNetV2 (matched frequency): imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg.

The folder name is the label and the class name is that line of classnames.txt,
so the order of classnames.txt matters.
"""
import os

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum

from .imagenet import ImageNetTestVariant
from .splits import list_images


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetTestVariant):
    config_name = "imagenetv2"
    folder = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"
    published = dict(classes=1000, test=10000)

    def read_data(self, classnames, classnames_path):
        names = list(classnames.values())
        self.require(*(os.path.join(self.image_subdir, str(label)) for label in range(len(names))),
                     purpose=f"read the {len(names)} classes of {classnames_path}")
        items = []
        for label, classname in enumerate(names):
            folder = os.path.join(self.image_dir, str(label))
            items.extend(Datum(os.path.join(folder, name), label, 0, classname)
                         for name in list_images(folder))
        return items
