"""The hand-crafted prompt template of each dataset ("{}" stands for the class name).

CoOp's per-dataset templates, keyed by the registered dataset name (DATASET.NAME). Every method
that prompts CLIP with a dataset's hand-written text (zero-shot CLIP, KgCoOp, DPT, CLIP-LoRA)
reads it through ``dataset_template``; trainers/zsclip.py re-exports the names under which CoOp's
own zsclip.py defines them. A dataset added to this package gets an entry here, or a place in
USES_DEFAULT_TEMPLATE when the default suits it (tests/test_datasets.py checks every one).
"""

CUSTOM_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."

# Registered datasets that use DEFAULT_TEMPLATE on purpose: a user's own image folders (classes of
# any kind), and the synthetic shapes, whose mini-CLIP was pretrained on "a photo of a {}." captions.
USES_DEFAULT_TEMPLATE = ("ImageFolder", "SyntheticShapes")


def dataset_template(dataset_name):
    """The hand-crafted template of the dataset DATASET.NAME names; DEFAULT_TEMPLATE for any other."""
    return CUSTOM_TEMPLATES.get(dataset_name, DEFAULT_TEMPLATE)
