"""VPT-deep, IVLP and MaPLe: parameter counts from the spec, gradients, reductions, config errors."""
import pytest
import torch
import torch.nn.functional as F

import trainers
from trainers.clip_prompting import deep_prompt_hook, tokenize, vit_b16_shaped_clip
from trainers.ivlp import IVLP, IVLPCLIP
from trainers.maple import MaPLeCLIP
from trainers.mudpt import MuDPTCLIP
from trainers.vpt import VPT, VPTCLIP

CLASSNAMES = ["dog", "sea_lion", "airliner"]


def make_cfg(node, **keys):
    return trainers.build_cfg(node, **keys)


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def zero_shot_logits(clip_model, images, template):
    """Stock CLIP (its own encode_* methods) with a hand-crafted prompt."""
    with torch.no_grad():
        text = clip_model.encode_text(tokenize([template.format(c.replace("_", " ")) for c in CLASSNAMES]))
        image = clip_model.encode_image(images)
    return clip_model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()


def assert_only_learner_gets_gradients(model, clip_model, images, labels):
    logits = model(images)
    assert logits.shape == (len(images), len(CLASSNAMES))
    F.cross_entropy(logits, labels).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert name.startswith("prompt_learner."), name
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert not any(p.requires_grad or p.grad is not None for p in clip_model.parameters())


@pytest.fixture(scope="module")
def vit_b16():
    return vit_b16_shaped_clip()


@pytest.mark.parametrize("build, node, keys, expected", [
    (VPTCLIP, "VPT", {"N_CTX_VISION": 8, "PROMPT_DEPTH_VISION": 12}, 73_728),        # 12 * 8 * 768
    (IVLPCLIP, "IVLP", {"PROMPT_DEPTH_TEXT": 12, "PROMPT_DEPTH_VISION": 12}, 30_720),  # 12*2*512 + 12*2*768
    (IVLPCLIP, "IVLP", {"N_CTX_TEXT": 4, "PROMPT_DEPTH_TEXT": 12,                     # deep language prompting
                        "N_CTX_VISION": 0, "PROMPT_DEPTH_VISION": 0}, 24_576),
    (MaPLeCLIP, "MAPLE", {}, 3_555_072),                                              # n=2, J=9: the paper's 3.55M
    (MaPLeCLIP, "MAPLE", {"PROMPT_DEPTH": 3}, 1_185_024),                             # cross-dataset config
])
def test_trainable_parameter_counts_on_vit_b16(vit_b16, build, node, keys, expected):
    model = build(make_cfg(node, **keys), CLASSNAMES, vit_b16)
    assert count(model) == expected
    assert count(model.prompt_learner) == expected


@pytest.mark.parametrize("build, node, keys", [
    (VPTCLIP, "VPT", {"N_CTX_VISION": 3, "PROMPT_DEPTH_VISION": 5}),
    (IVLPCLIP, "IVLP", {"PROMPT_DEPTH_TEXT": 6, "PROMPT_DEPTH_VISION": 4}),
    (MaPLeCLIP, "MAPLE", {}),
])
def test_forward_backward_trains_only_the_prompts(tiny_clip_model, build, node, keys):
    torch.manual_seed(0)
    model = build(make_cfg(node, **keys), CLASSNAMES, tiny_clip_model)
    assert_only_learner_gets_gradients(model, tiny_clip_model, torch.randn(2, 3, 224, 224), torch.tensor([0, 2]))


def test_vpt_without_prompts_is_zero_shot_clip(tiny_clip_model):
    images = torch.randn(2, 3, 224, 224)
    model = VPTCLIP(make_cfg("VPT", PROMPT_DEPTH_VISION=0), CLASSNAMES, tiny_clip_model)
    assert count(model) == 0
    with torch.no_grad():
        logits = model(images)
    assert (logits - zero_shot_logits(tiny_clip_model, images, "a photo of a {}.")).abs().max() < 1e-5


def test_ivlp_without_prompts_is_zero_shot_clip_with_the_init_template(tiny_clip_model):
    images = torch.randn(2, 3, 224, 224)
    cfg = make_cfg("IVLP", PROMPT_DEPTH_TEXT=0, PROMPT_DEPTH_VISION=0, CTX_INIT="a_good_photo_of_a")
    model = IVLPCLIP(cfg, CLASSNAMES, tiny_clip_model)
    assert count(model) == 0
    with torch.no_grad():
        logits = model(images)
    assert (logits - zero_shot_logits(tiny_clip_model, images, "a good photo of a {}.")).abs().max() < 1e-5


def test_untrained_word_initialised_ivlp_text_side_is_the_template(tiny_clip_model):
    """Depth-1 text prompts initialised from "a photo of a" reproduce that prompt exactly."""
    model = IVLPCLIP(make_cfg("IVLP", N_CTX_TEXT=4, PROMPT_DEPTH_TEXT=1, PROMPT_DEPTH_VISION=0),
                     CLASSNAMES, tiny_clip_model)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(images)
    assert (logits - zero_shot_logits(tiny_clip_model, images, "a photo of a {}.")).abs().max() < 1e-5


def test_vpt_deep_prompts_replace_the_last_tokens_up_to_the_depth(tiny_clip_model):
    model = VPTCLIP(make_cfg("VPT", N_CTX_VISION=3, PROMPT_DEPTH_VISION=4), CLASSNAMES, tiny_clip_model)
    learner, seen = model.prompt_learner, {}
    inner = deep_prompt_hook(learner.deep_ctx, start=-3)

    def spy(index, x):
        x = inner(index, x)
        seen[index] = x.detach().clone()
        return x
    with torch.no_grad():
        model.image_encoder(torch.randn(2, 3, 224, 224), learner.ctx, hook=spy)
    for i in range(1, 4):
        assert seen[i].shape[1] == 1 + 49 + 3
        assert torch.equal(seen[i][:, -3:], learner.deep_ctx[i - 1].expand(2, -1, -1))
    assert not torch.allclose(seen[4][:, -3:], learner.deep_ctx[-1].expand(2, -1, -1))


def test_ivlp_equals_mudpt_with_a_silent_injection_model(tiny_clip_model):
    """Spec: IVLP with n_t = n_v and D_t = D_v is MuDPT with the Injection Model removed."""
    torch.manual_seed(0)
    ivlp = IVLPCLIP(make_cfg("IVLP", N_CTX_TEXT=4, N_CTX_VISION=4, PROMPT_DEPTH_TEXT=6, PROMPT_DEPTH_VISION=6),
                    CLASSNAMES, tiny_clip_model)
    mudpt = MuDPTCLIP(make_cfg("MUDPT", INJECTION="linear", DEEP_PROMPT_DEPTH=6), CLASSNAMES, tiny_clip_model)
    m, i = mudpt.prompt_learner, ivlp.prompt_learner
    with torch.no_grad():
        for injection in (m.inj_t2v, m.inj_v2t):
            injection.proj.weight.zero_()
            injection.proj.bias.zero_()
        m.text_ctx.copy_(i.text.ctx)
        m.text_deep.copy_(i.text.deep_ctx)
        m.visual_ctx.copy_(i.vision.ctx)
        m.visual_deep.copy_(i.vision.deep_ctx)
        images = torch.randn(2, 3, 224, 224)
        assert (ivlp(images) - mudpt(images)).abs().max() < 1e-4


def test_maple_visual_prompts_are_per_layer_projections_of_the_text_prompts(tiny_clip_model):
    model = MaPLeCLIP(make_cfg("MAPLE", PROMPT_DEPTH=5), CLASSNAMES, tiny_clip_model)
    learner = model.prompt_learner
    projections = learner.compound_prompt_projections
    assert len(projections) == 4 and learner.compound_prompts_text.shape == (4, 2, 64)
    for proj in projections[1:]:  # deep copies of one initialised layer ...
        assert torch.equal(proj.weight, projections[0].weight)
        assert proj.weight.data_ptr() != projections[0].weight.data_ptr()  # ... but separate parameters
    with torch.no_grad():
        prompts = learner()
        assert torch.allclose(prompts["visual"], learner.proj(learner.ctx))
        for layer in range(4):
            expected = projections[layer](learner.compound_prompts_text[layer])
            assert torch.allclose(prompts["visual_deep"][layer], expected)
    # n = 2 from "a photo of a": "of a" stay frozen in the prompt text
    ids = learner.classes.tokenized_prompts
    assert ids[0, :7].tolist() == tokenize(["a photo of a dog."])[0, :7].tolist()


@pytest.mark.parametrize("build, node, keys, message", [
    (VPTCLIP, "VPT", {"PROMPT_DEPTH_VISION": 13}, "TRAINER.VPT: PROMPT_DEPTH_VISION is 13"),
    (VPTCLIP, "VPT", {"N_CTX_VISION": 0}, "TRAINER.VPT: N_CTX_VISION is 0 with PROMPT_DEPTH_VISION 1"),
    (IVLPCLIP, "IVLP", {"PROMPT_DEPTH_TEXT": -1}, "TRAINER.IVLP: PROMPT_DEPTH_TEXT is -1"),
    (IVLPCLIP, "IVLP", {"N_CTX_TEXT": 0}, "TRAINER.IVLP: N_CTX_TEXT is 0 with PROMPT_DEPTH_TEXT 9"),
    (MaPLeCLIP, "MAPLE", {"PROMPT_DEPTH": 13}, "TRAINER.MAPLE: PROMPT_DEPTH is 13"),
    (MaPLeCLIP, "MAPLE", {"PROMPT_DEPTH": 0}, "TRAINER.MAPLE: PROMPT_DEPTH is 0"),
    (MaPLeCLIP, "MAPLE", {"N_CTX": 0}, "TRAINER.MAPLE: N_CTX is 0"),
])
def test_bad_config_gives_a_clear_error(tiny_clip_model, build, node, keys, message):
    with pytest.raises(ValueError, match=message):
        build(make_cfg(node, **keys), CLASSNAMES, tiny_clip_model)


def test_a_random_init_warns_when_ctx_init_is_too_short(tiny_clip_model):
    with pytest.warns(UserWarning, match='TRAINER.MAPLE.CTX_INIT "a photo of a" has 4 tokens, fewer than N_CTX=6'):
        MaPLeCLIP(make_cfg("MAPLE", N_CTX=6, PROMPT_DEPTH=2), CLASSNAMES, tiny_clip_model)


@pytest.mark.parametrize("trainer, node, keys, message", [
    (VPT, "VPT", {"PROMPT_DEPTH_VISION": 0}, "TRAINER.VPT: PROMPT_DEPTH_VISION is 0, so there is nothing to train"),
    (IVLP, "IVLP", {"PROMPT_DEPTH_TEXT": 0, "PROMPT_DEPTH_VISION": 0}, "TRAINER.IVLP: PROMPT_DEPTH_TEXT and "),
    (IVLP, "IVLP", {"PREC": "bf16"}, 'TRAINER.IVLP.PREC is "bf16"'),
])
def test_trainers_refuse_configs_with_nothing_to_train(trainer, node, keys, message):
    with pytest.raises(ValueError, match=message):
        object.__new__(trainer).check_cfg(make_cfg(node, **keys))
