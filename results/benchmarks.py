"""Dataset names (as in configs/datasets/<name>.yaml), their display names and the protocol sets."""

DISPLAY_NAMES = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNet-V2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
}

# The 11 benchmark datasets, in the column order of the papers' tables.
ELEVEN_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                   "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
# Cross-dataset targets: the 10 datasets other than the ImageNet source.
CROSS_DATASET_TARGETS = ELEVEN_DATASETS[1:]
# Domain generalisation targets, evaluated with the ImageNet model.
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
SOURCE_DATASET = "imagenet"

ALL_DATASETS = ELEVEN_DATASETS + DG_TARGETS


def display_name(dataset):
    return DISPLAY_NAMES.get(dataset, dataset)
