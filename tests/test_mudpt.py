"""MuDPT: parameter counts from the spec, placement of prompts, gradients, config errors."""
import os

import pytest
import torch
import torch.nn.functional as F

import trainers
from trainers.clip_prompting import tokenize, vit_b16_shaped_clip
from trainers.coop import CoOpCLIP
from trainers.mudpt import MuDPTCLIP

CLASSNAMES = ["dog", "sea_lion", "airliner"]
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "trainers", "MuDPT")


def mudpt_cfg(**keys):
    return trainers.build_cfg("MUDPT", **keys)


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def vit_b16():
    return vit_b16_shaped_clip()


@pytest.mark.parametrize("keys, expected", [
    ({}, 11_089_408),                                                     # paper Fig. 4, n=4, D=12
    ({"INJECTION_NORM": "pre", "SHALLOW_FUSION": True}, 11_094_528),      # released UUMuDPT
    ({"INJECTION": "linear", "SHALLOW_FUSION": True}, 1_243_136),         # released HEAD MuDPT
    ({"INJECTION": "linear", "SHALLOW_FUSION": True, "N_CTX": 2, "DEEP_PROMPT_DEPTH": 8}, 1_202_176),
    ({"INJECTION": "linear"}, 849_152),
    ({"INJECTION_NORM": "pre", "SHALLOW_FUSION": True, "VISUAL_PROMPTS": "from_text",    # released UMuDPT
      "N_CTX": 2, "DEEP_PROMPT_DEPTH": 9}, 3_557_632),
])
def test_trainable_parameter_counts_on_vit_b16(vit_b16, keys, expected):
    model = MuDPTCLIP(mudpt_cfg(**keys), CLASSNAMES, vit_b16)
    assert count(model) == expected
    assert count(model.prompt_learner) == expected  # everything trainable lives in the learner


def released_cfg(name):
    cfg = mudpt_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, f"vit_b16_released_{name}.yaml"))
    return cfg


def test_umudpt_makes_every_visual_prompt_from_the_text_prompts(tiny_clip_model):
    model = MuDPTCLIP(released_cfg("umudpt_nctx2_depth9"), CLASSNAMES, tiny_clip_model)
    learner = model.prompt_learner
    assert learner.classes.eot_index.tolist() == [5, 6, 6]  # "a photo dog.": the released prefix
    assert count(model) == 55_552  # the released UMuDPT on a width-64, 12-layer CLIP
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"prompt_learner.text_ctx", "prompt_learner.text_deep"} <= names
    assert not any("visual_" in n or "inj_v2t" in n or "shallow_t2v" in n for n in names)
    with torch.no_grad():
        prompts = learner()
        # proj(LN_post(pre-LN block(LN_pre([T_0; T_1..T_8])))): index 0 is V_0, the rest V_1..V_8
        t2v = learner.inj_t2v
        mapped = t2v.proj(t2v.ln_post(t2v.block(t2v.ln_pre(torch.cat([learner.text_ctx[None], learner.text_deep])))))
        assert mapped.shape == (9, 2, 64)
        assert torch.allclose(prompts["visual"], mapped[0]) and torch.allclose(prompts["visual_deep"], mapped[1:])
        assert torch.equal(prompts["text_deep"], learner.text_deep)  # no vision-to-text path
    F.cross_entropy(model(torch.randn(1, 3, 224, 224)), torch.tensor([2])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())


def test_released_prefix_keeps_only_the_first_n_ctx_words(tiny_clip_model):
    template = MuDPTCLIP(mudpt_cfg(N_CTX=2), CLASSNAMES, tiny_clip_model).prompt_learner
    released = MuDPTCLIP(released_cfg("linear_nctx2_depth8"), CLASSNAMES, tiny_clip_model).prompt_learner
    ids = lambda text: tokenize([text])[0]  # noqa: E731
    # "a photo of a dog." keeps "of a" as frozen tokens; the released rule gives "a photo dog."
    assert torch.equal(template.classes.tokenized_prompts[0], ids("a photo of a dog."))
    assert torch.equal(released.classes.tokenized_prompts[0], ids("a photo dog."))
    assert torch.equal(released.classes.tokenized_prompts[1], ids("a photo sea lion."))
    assert released.classes.eot_index.tolist() == [5, 6, 6]
    assert torch.equal(released.text_ctx, template.text_ctx)  # both start from the embeddings of "a photo"
    with torch.no_grad():
        text = released()["text"]
    assert torch.allclose(text[0, 3:4], tiny_clip_model.token_embedding(ids("a photo dog.")[3:4]))  # "dog"
    at_four = MuDPTCLIP(mudpt_cfg(PREFIX="released"), CLASSNAMES, tiny_clip_model).prompt_learner
    assert torch.equal(at_four.classes.tokenized_prompts[0], ids("a photo of a dog."))  # N_CTX 4: no change


def test_only_prompts_and_injection_learn_and_all_get_gradients(tiny_clip_model):
    model = MuDPTCLIP(mudpt_cfg(), CLASSNAMES, tiny_clip_model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"prompt_learner.text_ctx", "prompt_learner.text_deep", "prompt_learner.visual_ctx",
            "prompt_learner.visual_deep"} <= names
    assert all(n.startswith("prompt_learner.") for n in names)
    assert any(n.startswith("prompt_learner.inj_t2v.block.attn") for n in names)
    logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 3)
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert not any(p.requires_grad for p in tiny_clip_model.parameters())


def test_text_prompt_layout_keeps_class_and_eot_positions(tiny_clip_model):
    model = MuDPTCLIP(mudpt_cfg(), CLASSNAMES, tiny_clip_model)
    learner = model.prompt_learner
    prompts = learner()
    text = prompts["text"]
    assert text.shape == (3, 77, 64)
    assert torch.equal(text[:, 1:5], learner.text_ctx.expand(3, -1, -1))  # T_0 right after SOS
    # "a photo of a dog." = SOS + 4 context + "dog" + "." + EOT -> EOT at 7;
    # "sea lion" and "airliner" are two BPE tokens each
    assert learner.classes.eot_index.tolist() == [7, 8, 8]
    ids = learner.classes.tokenized_prompts
    dog = tiny_clip_model.token_embedding(ids[0, 5:6])
    assert torch.allclose(text[0, 5:6], dog)


def test_deep_prompts_are_inserted_once_before_blocks_1_to_d_minus_1(tiny_clip_model):
    depth, n = 5, 4
    model = MuDPTCLIP(mudpt_cfg(DEEP_PROMPT_DEPTH=depth), CLASSNAMES, tiny_clip_model)
    prompts = model.prompt_learner()
    seen_text, seen_image = {}, {}
    blocks_t = model.text_encoder.transformer.resblocks
    blocks_v = model.image_encoder.visual.transformer.resblocks
    from trainers.clip_prompting import deep_prompt_hook

    def spy(store, inner):  # records each block's input after the prompts are spliced in
        def hook(index, x):
            x = inner(index, x)
            store[index] = x.detach().clone()
            return x
        return hook

    with torch.no_grad():
        model.text_encoder(prompts["text"], model.prompt_learner.classes.eot_index,
                           hook=spy(seen_text, deep_prompt_hook(prompts["text_deep"], 1)))
        model.image_encoder(torch.randn(2, 3, 224, 224), prompts["visual"],
                            hook=spy(seen_image, deep_prompt_hook(prompts["visual_deep"], -n)))
    assert len(seen_text) == len(blocks_t) == 12 and len(seen_image) == len(blocks_v)
    for i in range(1, depth):
        assert torch.allclose(seen_text[i][:, 1:1 + n], prompts["text_deep"][i - 1].expand(3, -1, -1))
        assert torch.allclose(seen_image[i][:, -n:], prompts["visual_deep"][i - 1].expand(2, -1, -1))
        assert seen_image[i].shape[1] == 1 + 49 + n  # CLS first, 7x7 patches, then the prompts
    for i in range(depth, 12):  # past the depth the prompt slots just propagate
        assert not torch.allclose(seen_text[i][:, 1:1 + n], prompts["text_deep"][-1].expand(3, -1, -1))


def test_fused_prompts_follow_equations_6_and_7(tiny_clip_model):
    model = MuDPTCLIP(mudpt_cfg(), CLASSNAMES, tiny_clip_model)
    learner = model.prompt_learner
    with torch.no_grad():
        prompts = learner()
        assert torch.allclose(prompts["text_deep"], learner.text_deep + learner.inj_v2t(learner.visual_deep))
        assert torch.allclose(prompts["visual_deep"], learner.visual_deep + learner.inj_t2v(learner.text_deep))
        assert torch.equal(prompts["visual"], learner.visual_ctx)  # layer 0 unfused by default
    fused = MuDPTCLIP(mudpt_cfg(INJECTION="linear", SHALLOW_FUSION=True), CLASSNAMES, tiny_clip_model).prompt_learner
    with torch.no_grad():
        out = fused()
        assert torch.allclose(out["visual"], fused.visual_ctx + fused.shallow_t2v(fused.text_ctx))


def test_depth_one_text_side_equals_coop_with_the_same_context(tiny_clip_model):
    cfg = mudpt_cfg(DEEP_PROMPT_DEPTH=1)
    cfg.TRAINER.COOP.CTX_INIT = "a photo of a"
    mudpt = MuDPTCLIP(cfg, CLASSNAMES, tiny_clip_model)
    coop = CoOpCLIP(cfg, CLASSNAMES, tiny_clip_model)
    with torch.no_grad():
        mudpt.prompt_learner.text_ctx.add_(0.01 * torch.randn(4, 64))
        coop.prompt_learner.ctx.copy_(mudpt.prompt_learner.text_ctx)
        assert torch.allclose(mudpt.text_features(), coop.text_features(), atol=1e-6)
    assert count(mudpt) == 4 * 64 * 2  # T_0 and V_0 only: no deep prompts, no injection


@pytest.mark.parametrize("keys, message", [
    ({"DEEP_PROMPT_DEPTH": 13}, "DEEP_PROMPT_DEPTH is 13"),
    ({"DEEP_PROMPT_DEPTH": 0}, "DEEP_PROMPT_DEPTH is 0"),
    ({"N_CTX": 6}, 'N_CTX is 6, but CTX_INIT "a photo of a" has only 4 tokens'),
    ({"INJECTION": "mlp"}, 'INJECTION is "mlp"'),
    ({"INJECTION_NORM": "sandwich"}, 'INJECTION_NORM is "sandwich"'),
    ({"VISUAL_PROMPTS": "shared"}, 'VISUAL_PROMPTS is "shared"'),
    ({"PREFIX": "short"}, 'PREFIX is "short"'),
    ({"VISUAL_PROMPTS": "from_text"}, "VISUAL_PROMPTS from_text .* set SHALLOW_FUSION True"),
])
def test_bad_config_gives_a_clear_error(tiny_clip_model, keys, message):
    with pytest.raises(ValueError, match="TRAINER.MUDPT: " + message.replace("(", r"\(")):
        MuDPTCLIP(mudpt_cfg(**keys), CLASSNAMES, tiny_clip_model)


def test_build_cfg_refuses_a_misspelt_method_key():
    assert trainers.build_cfg("MUDPT", N_CTX=2).TRAINER.MUDPT.N_CTX == 2
    with pytest.raises(KeyError, match="TRAINER.MUDPT.DEPTH"):
        trainers.build_cfg("MUDPT", DEPTH=3)
