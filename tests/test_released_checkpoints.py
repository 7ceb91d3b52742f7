"""Checkpoints in both directions: ours read the released code's checkpoints (their key names, as the
released trainers save them), and our trainer files load checkpoints under the original Dassl engine."""
import os

import pytest
import torch

import trainers
from dassl.utils import save_checkpoint
from dassl.utils.torchtools import load_trainable_state_dict
from trainers.clip_prompting import PromptTuningTrainer, tiny_clip
from trainers.clip_prompting.released import load_model_as_released
from trainers.cocoop import CoCoOpCLIP
from trainers.maple import MaPLeCLIP
from trainers.mudpt import MuDPTCLIP

CLASSNAMES = ["cat", "dog", "red car"]


@pytest.fixture(scope="module")
def small_clip():
    return tiny_clip(image_resolution=32, layers=2, patch_size=16)


def trained(module):
    """``module``'s trainable tensors moved away from their initial values, as after training."""
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    return module


def released_cocoop(learner):
    """A CoCoOp checkpoint as the released trainer saves it: the prompt learner's state dict, with the
    class-dependent token buffers and the meta-net's layers named linear1/linear2."""
    state = {"ctx": learner.ctx, "token_prefix": torch.zeros(3, 1, 8), "token_suffix": torch.zeros(3, 72, 8)}
    for ours, theirs in (("0", "linear1"), ("2", "linear2")):
        for kind in ("weight", "bias"):
            state[f"meta_net.{theirs}.{kind}"] = getattr(learner.meta_net, ours).__getattr__(kind)
    return {k: v.detach().clone() for k, v in state.items()}


def released_maple(learner):
    """The released MaPLe saves the whole model: prompt_learner.* (deep text prompts one per layer)
    beside the frozen encoders."""
    state = {"prompt_learner.ctx": learner.ctx, "prompt_learner.proj.weight": learner.proj.weight,
             "prompt_learner.proj.bias": learner.proj.bias, "image_encoder.conv1.weight": torch.zeros(1),
             "text_encoder.ln_final.weight": torch.zeros(1), "logit_scale": torch.zeros(())}
    for i, prompts in enumerate(learner.compound_prompts_text):
        state[f"prompt_learner.compound_prompts_text.{i}"] = prompts
    for i, layer in enumerate(learner.compound_prompt_projections):
        state[f"prompt_learner.compound_prompt_projections.{i}.weight"] = layer.weight
        state[f"prompt_learner.compound_prompt_projections.{i}.bias"] = layer.bias
    return {k: v.detach().clone() for k, v in state.items()}


def released_mudpt(learner):
    """The released linear MuDPT saves the whole model; its visual prompts live in the image encoder."""
    state = {"mudpt_prompt_learner.ctx": learner.text_ctx, "mudpt_prompt_learner.deep_prompts": learner.text_deep,
             "image_encoder.visual_ctx": learner.visual_ctx,
             "image_encoder.visual_ctx_deep_prompts": learner.visual_deep,
             "image_encoder.proj": torch.zeros(1), "mudpt_prompt_learner.token_prefix": torch.zeros(1)}
    for theirs, ours in (("mudpt_prompt_learner.embed_projection", learner.shallow_t2v),
                         ("mudpt_prompt_learner.deep_projections", learner.inj_t2v.proj),
                         ("image_encoder.visual_ctx_deep_projections", learner.inj_v2t.proj)):
        state[f"{theirs}.weight"], state[f"{theirs}.bias"] = ours.weight, ours.bias
    return {k: v.detach().clone() for k, v in state.items()}


CASES = {
    "CoCoOp": (CoCoOpCLIP, "COCOOP", {}, released_cocoop),
    "MaPLe": (MaPLeCLIP, "MAPLE", {"PROMPT_DEPTH": 2}, released_maple),
    "MuDPT": (MuDPTCLIP, "MUDPT", {"DEEP_PROMPT_DEPTH": 2, "INJECTION": "linear", "SHALLOW_FUSION": True},
              released_mudpt),
}


@pytest.mark.parametrize("method", list(CASES))
def test_a_checkpoint_of_the_released_code_loads_into_ours(small_clip, method, capsys):
    model_class, node, keys, released = CASES[method]
    cfg = trainers.build_cfg(node, **keys)
    source = trained(model_class(cfg, CLASSNAMES, small_clip).prompt_learner)
    target = model_class(cfg, CLASSNAMES, small_clip).prompt_learner
    load_trainable_state_dict(target, released(source), source="released")
    for (name, theirs), ours in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(theirs, ours), name
    if method != "CoCoOp":  # a whole-model checkpoint: its frozen tensors are named, not loaded
        assert "frozen CLIP tensors are not loaded" in capsys.readouterr().out


def test_our_trainers_load_under_the_original_engine(small_clip, tmp_path, monkeypatch):
    """The original engine's load_model formats a validation result (None in our checkpoints) and
    loads strictly; ours loads as the released trainers do, and names what a checkpoint lacks."""
    from dassl.engine.trainer import TrainerBase
    cfg = trainers.build_cfg("COCOOP")
    learner = trained(CoCoOpCLIP(cfg, CLASSNAMES, small_clip).prompt_learner)
    save_checkpoint({"state_dict": learner.state_dict(), "epoch": 2, "optimizer": None, "scheduler": None,
                     "val_result": None}, str(tmp_path / "prompt_learner"), model_name="model.pth.tar-2")
    fresh = CoCoOpCLIP(cfg, CLASSNAMES, small_clip).prompt_learner

    class Stub:
        _models = {"prompt_learner": fresh}

        def get_model_names(self):
            return ["prompt_learner"]

    monkeypatch.delattr(TrainerBase, "load_training_state")  # what tells the original engine apart
    PromptTuningTrainer.load_model(Stub(), str(tmp_path), epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(learner.parameters(), fresh.parameters()))
    state = dict(learner.state_dict())
    del state["ctx"]
    torch.save({"state_dict": state, "epoch": 2}, os.path.join(tmp_path, "prompt_learner", "model.pth.tar-3"))
    with pytest.raises(RuntimeError, match=r"lacks the trainable tensors \['ctx'\] of CoCoOpPromptLearner"):
        load_model_as_released(Stub(), str(tmp_path), epoch=3)
