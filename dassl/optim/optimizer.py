"""``build_optimizer``: Dassl's optimizer choices, fed only with trainable parameters."""
import warnings

import torch
import torch.nn as nn

from ..utils.tools import closest_match

AVAILABLE_OPTIMIZERS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]


def _trainable(params):
    return [p for p in params if p.requires_grad]


def _param_source(model, optim_cfg, param_groups):
    if param_groups is not None:
        if optim_cfg.STAGED_LR:
            warnings.warn("staged_lr will be ignored, if you need to use staged_lr, "
                          "please bind it with param_groups yourself.")
        return param_groups
    if optim_cfg.STAGED_LR:
        if not isinstance(model, nn.Module):
            raise TypeError(
                "When OPTIM.STAGED_LR is True, the model given to build_optimizer() must be "
                f"an instance of nn.Module, but got {type(model).__name__}"
            )
        if isinstance(model, nn.DataParallel):
            model = model.module
        new_layers = optim_cfg.NEW_LAYERS
        new_layers = [new_layers] if isinstance(new_layers, str) else list(new_layers)
        if not new_layers:
            warnings.warn("new_layers is empty (OPTIM.NEW_LAYERS), therefore, staged_lr is useless")
        base_params, new_params = [], []
        for name, module in model.named_children():
            (new_params if name in new_layers else base_params).extend(_trainable(module.parameters()))
        return [
            {"params": base_params, "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT},
            {"params": new_params},
        ]
    if isinstance(model, nn.Module):
        return _trainable(model.parameters())
    return list(model)


def build_optimizer(model, optim_cfg, param_groups=None):
    """Build the optimizer named by ``OPTIM.NAME`` over ``model``'s trainable
    parameters (or over ``param_groups`` when given)."""
    name = optim_cfg.NAME
    if name not in AVAILABLE_OPTIMIZERS:
        raise ValueError(
            f"optim must be one of {AVAILABLE_OPTIMIZERS}, but got {name} "
            f"(did you mean {closest_match(name, AVAILABLE_OPTIMIZERS)}?); set OPTIM.NAME"
        )
    params = _param_source(model, optim_cfg, param_groups)
    if isinstance(params, list) and not params:
        raise ValueError(
            "build_optimizer() got no trainable parameters: every parameter has "
            "requires_grad=False. Check which parameters the trainer unfreezes."
        )
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas)
    if name == "amsgrad":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas, amsgrad=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                                   alpha=optim_cfg.RMSPROP_ALPHA)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr, weight_decay=wd, betas=betas)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas)
