"""Low-rank updates of CLIP's attention projections (LoRA, Hu et al. 2022).

A method owns the learnable A and B matrices; the shared forward (``backbones.blocks``) adds
their update to the projections it computes, and the reference path merges them into the
weights of the library's own block. Projections: ``q``, ``k``, ``v`` (the query, key and value
rows of the attention's input projection) and ``o`` (its output projection).
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


class EncoderLoRA(nn.ModuleDict):
    """One encoder's AttentionLoRA modules, keyed by block index: what ``run_blocks`` takes as ``lora``."""

    def __init__(self, width, blocks, projections, rank, scale, dropout=0.0):
        super().__init__({str(i): AttentionLoRA(width, projections, rank, scale, dropout) for i in blocks})

    def at(self, index):
        """The updates of block ``index`` (None: the block is unchanged)."""
        key = str(index)
        return self[key] if key in self else None
