"""CoOp: class-token positions, class-specific context, initialisation."""
import pytest
import torch

import trainers
from trainers.clip_prompting import tokenize
from trainers.coop import CoOpCLIP

CLASSNAMES = ["dog", "sea_lion", "golden retriever"]


def coop(clip_model, **keys):
    return CoOpCLIP(trainers.build_cfg("COOP", **keys), CLASSNAMES, clip_model)


@pytest.mark.parametrize("position, text", [
    ("end", "a photo of a {}."),
    ("front", "{} a photo of a."),   # [SOS, class, ctx, ".", EOT]
    ("middle", "a photo {} of a."),  # [SOS, ctx[:n/2], class, ctx[n/2:], ".", EOT]
])
def test_class_token_position_matches_the_equivalent_plain_prompt(tiny_clip_model, position, text):
    model = coop(tiny_clip_model, CTX_INIT="a photo of a", CLASS_TOKEN_POSITION=position)
    with torch.no_grad():
        learned = model.encode_text(model.prompts())
        plain = tiny_clip_model.encode_text(tokenize([text.format(c.replace("_", " ")) for c in CLASSNAMES]))
    assert (learned - plain).abs().max() < 1e-5


def test_class_specific_context_and_random_init(tiny_clip_model):
    model = coop(tiny_clip_model, CSC=True, N_CTX=8)
    ctx = model.prompt_learner.ctx
    assert ctx.shape == (3, 8, 64) and ctx.requires_grad
    assert not torch.allclose(ctx[0], ctx[1])  # each class draws its own context
    assert abs(float(ctx.std()) - 0.02) < 0.005
    logits = model(torch.randn(2, 3, 224, 224))
    logits.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    generic = coop(tiny_clip_model, N_CTX=16)
    assert generic.prompt_learner.ctx.shape == (16, 64)  # 8,192 at width 512


def test_unknown_class_token_position_is_rejected(tiny_clip_model):
    with pytest.raises(ValueError, match='CLASS_TOKEN_POSITION is "start"'):
        coop(tiny_clip_model, CLASS_TOKEN_POSITION="start")
