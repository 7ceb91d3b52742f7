"""Low-rank updates of CLIP's attention projections (LoRA, Hu et al. 2022).

A method owns the learnable A and B matrices; the shared forward (``encoders.attention``) adds
their update to the projections it computes, and the reference path merges them into the
weights of CLIP's own block. Projections: ``q``, ``k``, ``v`` (rows of ``in_proj_weight``) and
``o`` (``out_proj``).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

PROJECTIONS = ("q", "k", "v", "o")


class LowRankUpdate(nn.Module):
    """The update ``scale * B @ A`` of a (d_out, d_in) weight; dropout acts on its input only.

    A starts as nn.Linear's default (Kaiming uniform) and B at zero, so a new update changes nothing.
    """

    def __init__(self, d_in, d_out, rank, scale, dropout=0.0):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = scale
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        """The update applied to x (..., d_in) -> (..., d_out)."""
        x = self.dropout(x)
        return F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype)) * self.scale

    def weight(self):
        return (self.B @ self.A) * self.scale


class AttentionLoRA(nn.ModuleDict):
    """Low-rank updates of some projections of one attention layer, keyed by q, k, v, o."""

    def __init__(self, width, projections, rank, scale, dropout=0.0):
        super().__init__({p: LowRankUpdate(width, width, rank, scale, dropout) for p in projections})

    def updated(self, name, x, y):
        """``y`` (the projection ``name`` of x) plus its low-rank update, if it has one."""
        return y + self[name](x).to(y.dtype) if name in self else y

    def merged(self, attn):
        """``attn``'s projection weights with the updates merged in, named as in CLIP's block."""
        if self.training and any(update.dropout.p > 0 for update in self.values()):
            raise RuntimeError("The reference path merges LoRA updates into the weights, which cannot express "
                               "LoRA dropout during training; train with the fast paths on (the default).")
        width = attn.embed_dim
        rows = [self[p].weight() if p in self else attn.in_proj_weight.new_zeros(width, width) for p in "qkv"]
        weights = {"attn.in_proj_weight": attn.in_proj_weight + torch.cat(rows).to(attn.in_proj_weight.dtype)}
        if "o" in self:
            weights["attn.out_proj.weight"] = attn.out_proj.weight + self["o"].weight().to(attn.out_proj.weight.dtype)
        return weights


class EncoderLoRA(nn.ModuleDict):
    """One encoder's AttentionLoRA modules, keyed by block index: what ``run_blocks`` takes as ``lora``."""

    def __init__(self, width, blocks, projections, rank, scale, dropout=0.0):
        super().__init__({str(i): AttentionLoRA(width, projections, rank, scale, dropout) for i in blocks})

    def at(self, index):
        """The updates of block ``index`` (None: the block is unchanged)."""
        key = str(index)
        return self[key] if key in self else None
