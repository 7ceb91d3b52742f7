"""Checkpoints written by the released code bases, read in this project's names.

A learnable module whose released code names its tensors otherwise defines
``from_released_state(state_dict)``; the engine calls it on every checkpoint it loads, so a
model trained with the released code evaluates here (and our own checkpoints pass unchanged).
"""
from collections import OrderedDict


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
    import torch
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
