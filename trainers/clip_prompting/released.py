"""Checkpoints written by the released code bases, read in this project's names.

A learnable module whose released code names its tensors otherwise defines
``from_released_state(state_dict)``; the engine calls it on every checkpoint it loads, so a
model trained with the released code evaluates here (and our own checkpoints pass unchanged).
"""
from collections import OrderedDict

import torch
import torch.nn as nn


def rename_released_keys(state_dict, renames, whole_model_prefixes=(), owner="the released code"):
    """``state_dict`` with each key starting with a ``renames`` prefix renamed (longest prefix first).

    A released checkpoint of the whole model (any key starting with one of ``whole_model_prefixes``,
    e.g. "prompt_learner.") also holds the frozen CLIP weights: only the renamed keys are kept, and
    one note says how many frozen tensors were left out (the backbone's own weights are used).
    """
    order = sorted(renames, key=len, reverse=True)
    whole = any(k.startswith(tuple(whole_model_prefixes)) for k in state_dict) if whole_model_prefixes else False
    out, left_out = OrderedDict(), 0
    for key, value in state_dict.items():
        prefix = next((p for p in order if key.startswith(p)), None)
        if prefix is not None:
            out[renames[prefix] + key[len(prefix):]] = value
        elif whole:
            left_out += 1
        else:
            out[key] = value
    if left_out:
        print(f"Note: the checkpoint holds the whole model as {owner} saves it; its {left_out} frozen CLIP "
              "tensors are not loaded (this run's backbone weights are used)")
    return out


def stack_released_layers(state_dict, name):
    """Per-layer tensors ``name.0``, ``name.1``, ... (a released ParameterList) stacked into ``name``."""
    layers = sorted((int(k[len(name) + 1:]), k) for k in state_dict if k.startswith(name + ".")
                    and k[len(name) + 1:].isdigit())
    if not layers:
        return state_dict
    out = OrderedDict((k, v) for k, v in state_dict.items() if k not in {key for _, key in layers})
    out[name] = torch.stack([state_dict[key] for _, key in layers])
    return out


def load_model_as_released(trainer, directory, epoch=None):
    """``load_model`` for the original Dassl engine, whose own one formats a validation result these
    trainers never record and loads strictly: load as the released CoOp trainers do (class-dependent
    buffers left out), and say which trainable tensors a checkpoint lacks instead of ignoring them."""
    import os

    from dassl.utils import load_checkpoint

    from .model import PromptedCLIP
    if not directory:
        print("Note that load_model() is skipped as no pretrained model is given")
        return
    model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    for name in trainer.get_model_names():
        path = os.path.join(directory, name, model_file)
        if not os.path.exists(path):
            raise FileNotFoundError(f'Model not found at "{path}": check --model-dir and --load-epoch')
        checkpoint = load_checkpoint(path)
        module = trainer._models[name]
        state = checkpoint["state_dict"]
        if hasattr(module, "from_released_state"):
            state = module.from_released_state(state)
        skip = PromptedCLIP.class_dependent_buffers
        state = OrderedDict((k, v) for k, v in state.items() if k.rsplit(".", 1)[-1] not in skip)
        missing = [n for n, p in module.named_parameters() if p.requires_grad and n not in state]
        if missing:
            raise RuntimeError(f'"{path}" lacks the trainable tensors {missing} of {type(module).__name__}: it was '
                               "saved by another trainer or with another config.")
        print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint["epoch"]})')
        module.load_state_dict(state, strict=False)


def replay_openai_clip_draws(clip_model, inside_vision_tower):
    """Draw from the global RNG what ``clip.model.CLIP``'s constructor draws for a model of ``clip_model``'s
    shape (OpenAI ViT), in its order, with ``inside_vision_tower()`` run where a released code base's
    modified vision tower draws its own tensors: after the positional embedding, before the blocks.
    Returns what ``inside_vision_tower`` returns. The values drawn for CLIP's own weights are thrown away
    (the checkpoint's replace them); only where the RNG stands afterwards matters."""
    from clip.model import Transformer
    visual = clip_model.visual
    width, patch = visual.conv1.out_channels, visual.conv1.kernel_size[0]
    nn.Conv2d(3, width, patch, stride=patch, bias=False)
    torch.randn(width)                                    # class embedding
    torch.randn(visual.positional_embedding.shape)
    drawn = inside_vision_tower()
    Transformer(width, len(visual.transformer.resblocks), width // 64)
    torch.randn(visual.proj.shape)
    text_width = clip_model.ln_final.weight.shape[0]
    text = Transformer(text_width, len(clip_model.transformer.resblocks), text_width // 64)
    embedding = nn.Embedding(clip_model.token_embedding.num_embeddings, text_width)
    # CLIP.initialize_parameters: normal draws over the text side (a ViT tower keeps its own init)
    nn.init.normal_(embedding.weight)
    nn.init.normal_(torch.empty(clip_model.positional_embedding.shape))
    for block in text.resblocks:
        for weight in (block.attn.in_proj_weight, block.attn.out_proj.weight, block.mlp.c_fc.weight,
                       block.mlp.c_proj.weight):
            nn.init.normal_(weight)
    nn.init.normal_(torch.empty(clip_model.text_projection.shape))
    return drawn
