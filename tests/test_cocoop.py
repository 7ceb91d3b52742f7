"""CoCoOp: the batched per-image text pass equals the one-image-at-a-time loop."""
import torch

import trainers
from trainers.clip_prompting import set_fast_paths, vit_b16_shaped_clip
from trainers.cocoop import CoCoOpCLIP

CLASSNAMES = ["dog", "sea_lion", "airliner", "golden retriever"]


def cocoop_cfg(n_ctx=4, ctx_init="a photo of a"):
    return trainers.build_cfg("COCOOP", N_CTX=n_ctx, CTX_INIT=ctx_init)


def test_batched_text_pass_equals_per_image_loop(tiny_clip_model):
    torch.manual_seed(0)
    model = CoCoOpCLIP(cocoop_cfg(), CLASSNAMES, tiny_clip_model)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        batched = model(images)
        set_fast_paths(model, False)
        loop = model(images)
    assert batched.shape == (3, 4)
    assert (batched - loop).abs().max() < 1e-4
    # each image has its own prompts: logits are not those of a shared context
    assert not torch.allclose(batched[0] - batched[0].mean(), batched[1] - batched[1].mean(), atol=1e-3)


def test_gradients_reach_context_and_meta_net(tiny_clip_model):
    model = CoCoOpCLIP(cocoop_cfg(), CLASSNAMES, tiny_clip_model)
    logits = model(torch.randn(2, 3, 224, 224))
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
    for name, p in model.prompt_learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_parameter_count_on_vit_b16():
    model = CoCoOpCLIP(cocoop_cfg(), CLASSNAMES, vit_b16_shaped_clip())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 35_360
    model16 = CoCoOpCLIP(cocoop_cfg(16, ""), CLASSNAMES, vit_b16_shaped_clip())
    assert sum(p.numel() for p in model16.parameters() if p.requires_grad) == 41_504
