"""Every trainer's exact fast paths: logits equal the straightforward implementation."""
import importlib

import pytest
import torch

import trainers
from trainers.clip_prompting import set_fast_paths

CLASSNAMES = ["dog", "sea_lion", "airliner", "golden retriever", "tabby cat"]
MODELS = [
    ("trainers.coop", "CoOpCLIP"), ("trainers.cocoop", "CoCoOpCLIP"), ("trainers.mudpt", "MuDPTCLIP"),
    ("trainers.vpt", "VPTCLIP"), ("trainers.ivlp", "IVLPCLIP"), ("trainers.maple", "MaPLeCLIP"),
    ("trainers.dcp", "DCPCLIP"), ("trainers.dpt", "DPTCLIP"), ("trainers.kgcoop", "KgCoOpCLIP"),
    ("trainers.promptsrc", "PromptSRCCLIP"), ("trainers.mma", "MMACLIP"), ("trainers.cliplora", "CLIPLoRACLIP"),
]
# Settings that make a method's additions matter: adapters at a visible scale, also on the inputs
# (layer 0); LoRA on every projection.
OVERRIDES = {"MMACLIP": ("MMA", {"ADAPTER_SCALE": 0.5, "ADAPTER_START": 0}),
             "CLIPLoRACLIP": ("CLIPLORA", {"PARAMS": ["q", "k", "v", "o"]})}


def build(module, cls, clip_model):
    torch.manual_seed(0)
    node, keys = OVERRIDES.get(cls, (None, {}))
    model = getattr(importlib.import_module(module), cls)(trainers.build_cfg(node, **keys), CLASSNAMES, clip_model)
    with torch.no_grad():  # a zero-initialised tensor (LoRA's B) would leave its part of the forward untested
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(std=0.1)
    return model.eval()


@pytest.mark.parametrize("module, cls", MODELS, ids=[m[1] for m in MODELS])
def test_fast_paths_give_the_reference_logits(tiny_clip_model, module, cls):
    model = build(module, cls, tiny_clip_model)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        fast = model(images)
        set_fast_paths(model, False)
        reference = model(images)
        set_fast_paths(model, True)
        assert fast.shape == (3, len(CLASSNAMES))
        assert (fast - reference).abs().max() < 1e-5
        if not model.text_depends_on_image:  # evaluation computes the text state once, then reuses it
            cached = model.text_state()
            assert torch.equal(model(images, text_state=cached).argmax(1), fast.argmax(1))
            assert (model(images, text_state=cached) - fast).abs().max() < 1e-5
