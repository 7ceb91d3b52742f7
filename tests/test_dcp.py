"""DCP (CMPA): counts from the spec, exactness of the lockstep text tracking, batch independence,
the released behaviour as an option, and config errors."""
import pytest
import torch
import torch.nn.functional as F

import trainers
from trainers.clip_prompting import vit_b16_shaped_clip
from trainers.clip_prompting.encoders import run_blocks
from trainers.dcp import DCPCLIP
from trainers.ivlp import IVLPCLIP

CLASSNAMES = ["dog", "sea_lion", "airliner"]
RELEASED = {"FUSING": "mean", "UPDATE_TEXT": False}


def make_cfg(node="DCP", **keys):
    return trainers.build_cfg(node, **keys)


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def perturb(model, scale=0.05):
    """Move every learnable tensor off its initial value (e.g. the zero-ish MHA biases)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.prompt_learner.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.fixture(scope="module")
def vit_b16():
    return vit_b16_shaped_clip()


@pytest.mark.parametrize("keys, expected", [
    ({"N_CTX": 16}, 11_048_448),                      # spec total, PS True, n = 16
    ({"N_CTX": 16, **RELEASED}, 7_502_336),           # spec's "about 7.50M receive gradient": no dead text half
    ({"N_CTX": 16, "PS": False, "PROMPT_DEPTH": 2}, 2 * 11_027_968 + 16 * (512 + 768)),  # one per refined block
])
def test_trainable_parameter_counts_on_vit_b16(vit_b16, keys, expected):
    model = DCPCLIP(make_cfg(CTX_INIT="", **keys), CLASSNAMES, vit_b16)
    assert count(model) == count(model.prompt_learner) == expected


def reference_logits(model, image):
    """The encoder loop as the paper describes it, for one image: CLIP's own blocks over all 77
    text positions, both modalities advanced block by block, t' written back."""
    learner, te, ie = model.prompt_learner, model.text_encoder, model.image_encoder
    n, vis = learner.n_ctx, ie.visual
    x_v = ie.tokens(image[None])
    x_v = vis.ln_pre(torch.cat([x_v, learner.prompts_visual[None]], dim=1))
    x_t = learner.classes.assemble(learner.prompts_text) + te.positional_embedding
    for i in range(12):
        if 1 <= i <= learner.depth:
            t = x_t[:, 1:1 + n].mean(0, keepdim=True)  # identical rows for every class (causal mask)
            v_new, t_new = learner.attention(i)(x_v[:, -n:], t)
            x_v = torch.cat([x_v[:, :-n], v_new], dim=1)
            if t_new is not None:
                x_t = torch.cat([x_t[:, :1], t_new.expand(len(x_t), -1, -1), x_t[:, 1 + n:]], dim=1)
        x_v = run_blocks(vis.transformer.resblocks[i:i + 1], x_v, causal=False, fast=False)
        x_t = run_blocks(te.transformer.resblocks[i:i + 1], x_t, causal=True, fast=False)
    image_f = F.normalize(vis.ln_post(x_v[:, 0]) @ vis.proj, dim=-1)
    rows = torch.arange(len(x_t))
    text_f = F.normalize(te.ln_final(x_t)[rows, learner.classes.eot_index] @ te.text_projection, dim=-1)
    return model.logit_scale * image_f @ text_f.t()


@pytest.mark.parametrize("keys", [{}, {"PS": False, "PROMPT_DEPTH": 4}])
def test_lockstep_text_tracking_equals_the_plain_interleaved_loop(tiny_clip_model, keys):
    model = DCPCLIP(make_cfg(**keys), CLASSNAMES, tiny_clip_model)
    perturb(model)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(images)
        for b in range(2):
            assert (logits[b] - reference_logits(model, images[b])[0]).abs().max() < 1e-4


def test_text_update_changes_the_text_features(tiny_clip_model):
    model = DCPCLIP(make_cfg(), CLASSNAMES, tiny_clip_model)
    perturb(model)
    released = DCPCLIP(make_cfg(UPDATE_TEXT=False), CLASSNAMES, tiny_clip_model)
    released.prompt_learner.load_state_dict(model.prompt_learner.state_dict(), strict=False)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (model(images) - released(images)).abs().max() > 1e-3
    assert model.text_depends_on_image and not released.text_depends_on_image


def test_prediction_ignores_the_other_images_by_default_but_not_in_released_mode(tiny_clip_model):
    torch.manual_seed(0)
    image, other_a, other_b = torch.randn(3, 1, 3, 224, 224)
    for keys, independent in (({}, True), (RELEASED, False)):
        model = DCPCLIP(make_cfg(**keys), CLASSNAMES, tiny_clip_model)
        perturb(model)
        with torch.no_grad():
            first = model(torch.cat([image, other_a]))[0]
            second = model(torch.cat([image, other_b]))[0]
            alone = model(image)[0]
        if independent:
            assert (first - second).abs().max() < 1e-5 and (first - alone).abs().max() < 1e-5
        else:
            assert (first - second).abs().max() > 1e-3


@pytest.mark.parametrize("keys, learns_text_half", [
    ({}, True), (RELEASED, False), ({"FUSING": "max", "PS": False}, True)])
def test_forward_backward_trains_only_the_learner(tiny_clip_model, keys, learns_text_half):
    model = DCPCLIP(make_cfg(**keys), CLASSNAMES, tiny_clip_model)
    logits = model(torch.randn(2, 3, 224, 224))
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    names = set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert name.startswith("prompt_learner."), name
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            names.add(name)
        else:
            assert p.grad is None, name
    assert any(".text." in n for n in names) == learns_text_half
    assert {"prompt_learner.prompts_text", "prompt_learner.prompts_visual"} <= names


def test_depth_zero_is_shallow_independent_prompting(tiny_clip_model):
    """With no refined blocks DCP is IVLP at depth 1/1 (same prompts, no coupling)."""
    dcp = DCPCLIP(make_cfg(PROMPT_DEPTH=0), CLASSNAMES, tiny_clip_model)
    ivlp = IVLPCLIP(make_cfg("IVLP", PROMPT_DEPTH_TEXT=1, PROMPT_DEPTH_VISION=1), CLASSNAMES, tiny_clip_model)
    assert count(dcp) == count(ivlp) == 2 * 2 * 64
    with torch.no_grad():
        dcp.prompt_learner.prompts_text.copy_(ivlp.prompt_learner.text.ctx)
        dcp.prompt_learner.prompts_visual.copy_(ivlp.prompt_learner.vision.ctx)
        images = torch.randn(2, 3, 224, 224)
        assert (dcp(images) - ivlp(images)).abs().max() < 1e-5


@pytest.mark.parametrize("keys, message", [
    ({"FUSING": "avg"}, 'FUSING is "avg"'),
    ({"PROMPT_DEPTH": 12}, "PROMPT_DEPTH is 12"),
    ({"PROMPT_DEPTH": -1}, "PROMPT_DEPTH is -1"),
    ({"N_CTX": 0}, "N_CTX is 0"),
])
def test_bad_config_gives_a_clear_error(tiny_clip_model, keys, message):
    with pytest.raises(ValueError, match="TRAINER.DCP: " + message):
        DCPCLIP(make_cfg(**keys), CLASSNAMES, tiny_clip_model)
