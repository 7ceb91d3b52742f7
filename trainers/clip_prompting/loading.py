"""OpenAI CLIP loading, where trainers, scripts and tests have always imported it from.

The code lives in ``backbones/openai.py``; this name is that same module (so a patched
attribute, e.g. the cache folder, is seen by the loader). Other families load through
``backbones.load_backbone``.
"""
import sys

from backbones import openai

sys.modules[__name__] = openai
