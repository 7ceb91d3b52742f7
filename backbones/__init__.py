"""Every CLIP family behind one interface (see ``interface.py``).

``as_backbone(model)`` wraps a library's model (or returns a Backbone as it is);
``load_backbone(name, path)`` loads one from local files, the family chosen by the name:
OpenAI names ("ViT-B/16"), ``openclip:<model>`` (OpenCLIP, its timm towers included),
``hf:<label>`` or a folder with ``config.json`` (a Hugging Face ``transformers`` CLIP).
"""
from .interface import CLIP_MEAN, CLIP_STD, Backbone, Preprocessing, TextTower, Tokenizer, VisionTower
from .loading import as_backbone, load_backbone, load_backbone_from_cfg
