"""One model contract for every method: ``forward = logits(*features(images, text_state))``.

- ``text_features()`` is the normalised (C, E) class features for every model that has class
  features of its own (DPT's unnormalised ones, which its prompts are built from, have their
  own name);
- CoCoOp, DCP and DPT, whose logits depend on the image in their own way, give through the
  contract the logits of a straightforward computation on stock CLIP (its own modules, one
  image at a time), and their cached text state changes nothing.
"""
import pytest
import torch
import torch.nn.functional as F

import trainers
from dassl.engine import TRAINER_REGISTRY
from method_configs import base2new_config, descriptions_file, project_trainers, script_folders
from trainers.clip_prompting import tokenize
from trainers.cocoop import CoCoOpCLIP
from trainers.dcp import DCPCLIP
from trainers.dpt import DPTCLIP

CLASSNAMES = ["dog", "sea lion", "airliner"]
NO_CLASS_FEATURES = {"CoCoOp"}  # every image has its own class features


# --------------------------------------------------------------------- text_features() is normalised
def build_trainer_model(trainer, clip_path, folder):
    """The trainer's model for three classes, with the config its base-to-new script runs (if any)."""
    cfg = trainers.build_cfg()
    if trainer in script_folders():
        cfg.merge_from_file(base2new_config(script_folders()[trainer]))
    cfg.merge_from_list(["TRAINER.NAME", trainer, "MODEL.BACKBONE.PATH", clip_path, "USE_CUDA", "False",
                         "DATASET.DESCRIPTIONS", descriptions_file(folder, CLASSNAMES)])
    return TRAINER_REGISTRY.get(trainer)(cfg, classnames=CLASSNAMES).model


@pytest.mark.parametrize("trainer", project_trainers())
def test_text_features_are_l2_normalised_class_features(trainer, tiny_clip_path, tmp_path):
    model = build_trainer_model(trainer, tiny_clip_path, tmp_path)
    if trainer in NO_CLASS_FEATURES:
        with pytest.raises(NotImplementedError, match="depends on each image"):
            model.text_features()
        return
    with torch.no_grad():
        text = model.text_features()
    assert text.shape[0] == len(CLASSNAMES) and text.dtype == torch.float32
    assert torch.allclose(text.norm(dim=-1), torch.ones(len(CLASSNAMES)), atol=1e-5)


def test_dpt_keeps_its_unnormalised_features_under_their_own_name(tiny_clip_model):
    model = DPTCLIP(trainers.build_cfg("DPT", N_CTX=4, VPT_N_CTX=3, CPN=2), CLASSNAMES, tiny_clip_model)
    with torch.no_grad():
        raw, state = model.unnormalised_text_features(), model.text_state()
        assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(CLASSNAMES)), atol=1e-3)
        assert torch.equal(state.unnormalised, raw)
        assert torch.equal(model.text_features(), F.normalize(raw, dim=-1))


# --------------------------------------------------------------------- stock CLIP, step by step
def stock_block(block, x):
    """One of CLIP's own residual blocks on batch-first tokens (its blocks take L, N, D)."""
    return block(x.permute(1, 0, 2)).permute(1, 0, 2)


def stock_patch_tokens(clip_model, image):
    """CLS + patch tokens with positional embedding, (1, 1 + patches, D), before ln_pre."""
    v = clip_model.visual
    x = v.conv1(image[None]).flatten(2).transpose(1, 2)
    return torch.cat([v.class_embedding.expand(1, 1, -1), x], dim=1) + v.positional_embedding


def stock_image_feature(clip_model, x):
    v = clip_model.visual
    return F.normalize(v.ln_post(x[:, 0]) @ v.proj, dim=-1)


def prompt_ids(prefix):
    return tokenize([f"{prefix} {name}." for name in CLASSNAMES])


def stock_text_feature(clip_model, x, ids):
    rows = torch.arange(len(ids))
    return clip_model.ln_final(x)[rows, ids.argmax(dim=-1)] @ clip_model.text_projection


def stock_prompted_text(clip_model, ctx, prefix):
    """CLIP's text encoder over "{prefix} {class}." with the prefix's n token embeddings replaced by ctx (n, D)."""
    ids = prompt_ids(prefix)
    x = clip_model.token_embedding(ids)
    x = torch.cat([x[:, :1], ctx.expand(len(ids), -1, -1), x[:, 1 + len(ctx):]], dim=1)
    x = x + clip_model.positional_embedding
    for block in clip_model.transformer.resblocks:
        x = stock_block(block, x)
    return stock_text_feature(clip_model, x, ids)


def perturb(module, seed=1, scale=0.05):
    """Move every learnable tensor off its initial value."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


def assert_contract_gives(model, images, expected, atol=1e-5):
    with torch.no_grad():
        logits = model(images)
        assert torch.equal(logits, model.logits(*model.features(images)))
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max() < atol


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 224, 224)


def test_cocoop_gives_the_per_image_context_logits(tiny_clip_model, images):
    model = CoCoOpCLIP(trainers.build_cfg("COCOOP", N_CTX=4, CTX_INIT="a photo of a"), CLASSNAMES, tiny_clip_model)
    perturb(model.prompt_learner)
    learner, scale = model.prompt_learner, tiny_clip_model.logit_scale.exp()
    with torch.no_grad():
        expected = []
        for image in images:
            image_f = F.normalize(tiny_clip_model.encode_image(image[None]), dim=-1)
            ctx = learner.ctx + learner.meta_net(image_f)  # the context shifted for this image
            text_f = F.normalize(stock_prompted_text(tiny_clip_model, ctx, "a photo of a"), dim=-1)
            expected.append(scale * image_f[0] @ text_f.t())
    assert_contract_gives(model, images, torch.stack(expected))
    assert model.text_depends_on_image
    with pytest.raises(ValueError, match="depends on each image"):
        model(images, text_state=torch.zeros(len(CLASSNAMES), 64))


def dcp_reference_logits(clip_model, model, image):
    """DCP as the paper describes it, for one image: both encoders advanced block by block on
    CLIP's own blocks over all 77 text positions, t' and v' written back before blocks 1..depth."""
    learner, n = model.prompt_learner, model.prompt_learner.n_ctx
    x_v = clip_model.visual.ln_pre(torch.cat([stock_patch_tokens(clip_model, image), learner.prompts_visual[None]], 1))
    ids = prompt_ids("a photo of a")
    x_t = clip_model.token_embedding(ids)
    x_t = torch.cat([x_t[:, :1], learner.prompts_text.expand(len(ids), -1, -1), x_t[:, 1 + n:]], dim=1)
    x_t = x_t + clip_model.positional_embedding
    text_blocks, image_blocks = clip_model.transformer.resblocks, clip_model.visual.transformer.resblocks
    for i in range(len(image_blocks)):
        if 1 <= i <= learner.depth:
            v_new, t_new = learner.attention(i)(x_v[:, -n:], x_t[:1, 1:1 + n])  # every class row has the same slots
            x_v = torch.cat([x_v[:, :-n], v_new], dim=1)
            x_t = torch.cat([x_t[:, :1], t_new.expand(len(ids), -1, -1), x_t[:, 1 + n:]], dim=1)
        x_v, x_t = stock_block(image_blocks[i], x_v), stock_block(text_blocks[i], x_t)
    text_f = F.normalize(stock_text_feature(clip_model, x_t, ids), dim=-1)
    return clip_model.logit_scale.exp() * stock_image_feature(clip_model, x_v)[0] @ text_f.t()


def test_dcp_gives_the_interleaved_two_tower_logits(tiny_clip_model, images):
    model = DCPCLIP(trainers.build_cfg("DCP", PROMPT_DEPTH=4), CLASSNAMES, tiny_clip_model)
    perturb(model.prompt_learner)
    assert model.text_depends_on_image
    with torch.no_grad():
        expected = torch.stack([dcp_reference_logits(tiny_clip_model, model, image) for image in images])
    assert_contract_gives(model, images, expected)


def dpt_reference_logits(clip_model, model, image):
    """DPT for one image: zero-shot CLIP picks the top-K classes; before each lower block VPT tokens,
    before each upper block the class-aware tokens of those classes are appended, and dropped after it."""
    cfg_k, first = model.top_k, model.first_class_aware
    ctx = model.prompt_learner.ctx
    text = stock_prompted_text(clip_model, ctx, " ".join(["X"] * len(ctx)))  # T, unnormalised
    zero_shot = F.normalize(clip_model.encode_text(tokenize([f"a photo of a {c}." for c in CLASSNAMES])), dim=-1)
    frozen = F.normalize(clip_model.encode_image(image[None]), dim=-1)
    top_k = (frozen @ zero_shot.t()).topk(cfg_k, dim=-1).indices
    x = clip_model.visual.ln_pre(stock_patch_tokens(clip_model, image))
    for i, block in enumerate(clip_model.visual.transformer.resblocks):
        if i < first:
            tokens = model.ctx_learner.ctx[i][None]
        else:
            tokens, _ = model.extractor.layers[i - first](x, text[top_k])
        x = stock_block(block, torch.cat([x, tokens], dim=1))[:, :x.shape[1]]
    return clip_model.logit_scale.exp() * stock_image_feature(clip_model, x)[0] @ F.normalize(text, dim=-1).t()


def test_dpt_gives_the_class_aware_prompt_logits_and_its_cached_text_state_changes_nothing(tiny_clip_model, images):
    model = DPTCLIP(trainers.build_cfg("DPT", N_CTX=4, VPT_N_CTX=3, CPN=2, BOTTOMLIMIT=10), CLASSNAMES,
                    tiny_clip_model)
    for part in (model.prompt_learner, model.ctx_learner, model.extractor):
        perturb(part)
    with torch.no_grad():
        expected = torch.stack([dpt_reference_logits(tiny_clip_model, model, image) for image in images])
        assert torch.equal(model(images, text_state=model.text_state()), model(images))  # evaluation's cache
        assert torch.equal(model.outputs(images)["logits"], model(images))  # the training loss's logits
    assert_contract_gives(model, images, expected)
