"""Optimizer and LR scheduler: the CoOp-family LR sequence, numerically."""
import io
import math

import pytest
import torch
import torch.nn as nn

from dassl.config import get_cfg_default
from dassl.optim import build_lr_scheduler, build_optimizer


def optim_cfg(lr=0.002, max_epoch=10, **kw):
    cfg = get_cfg_default()
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = lr
    cfg.OPTIM.MAX_EPOCH = max_epoch
    cfg.OPTIM.LR_SCHEDULER = "cosine"
    cfg.OPTIM.WARMUP_EPOCH = 1
    cfg.OPTIM.WARMUP_TYPE = "constant"
    cfg.OPTIM.WARMUP_CONS_LR = 1e-5
    for k, v in kw.items():
        setattr(cfg.OPTIM, k, v)
    return cfg.OPTIM


def build(ocfg):
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, ocfg)
    return opt, build_lr_scheduler(opt, ocfg)


def lr_sequence(ocfg, steps):
    """LR each epoch trains at, then the LR after the last step."""
    opt, sched = build(ocfg)
    seq = []
    for _ in range(steps):
        seq.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    seq.append(opt.param_groups[0]["lr"])
    return seq


TABLE = {  # spec §6.3, MAX_EPOCH = 10; the 11th value is printed on the last batch line
    0.002: ["1.0000e-05", "2.0000e-03", "1.9511e-03", "1.8090e-03", "1.5878e-03", "1.3090e-03",
            "1.0000e-03", "6.9098e-04", "4.1221e-04", "1.9098e-04", "4.8943e-05"],
    0.0025: ["1.0000e-05", "2.5000e-03", "2.4388e-03", "2.2613e-03", "1.9847e-03", "1.6363e-03",
             "1.2500e-03", "8.6373e-04", "5.1527e-04", "2.3873e-04", "6.1179e-05"],
}


@pytest.mark.parametrize("base", [0.002, 0.0025])
def test_coop_lr_table(base):
    seq = lr_sequence(optim_cfg(lr=base), 10)
    assert [f"{lr:.4e}" for lr in seq] == TABLE[base]
    for e, lr in enumerate(seq[1:10], start=1):  # the closed form of the shifted cosine
        assert lr == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * (e - 1) / 10)), rel=1e-9)


def test_other_configs_of_the_lineage():
    fmt = lambda seq: [f"{lr:.4e}" for lr in seq]  # noqa: E731
    assert fmt(lr_sequence(optim_cfg(0.0035, 5), 5)[:5]) == [
        "1.0000e-05", "3.5000e-03", "3.1658e-03", "2.2908e-03", "1.2092e-03"]
    assert fmt(lr_sequence(optim_cfg(0.0026, 2), 2)[:2]) == ["1.0000e-05", "2.6000e-03"]
    cmpa = lr_sequence(optim_cfg(0.0035, 20), 20)
    assert fmt(cmpa[:2]) == ["1.0000e-05", "3.5000e-03"]
    assert cmpa[2] == pytest.approx(3.4784e-03, abs=1e-7)  # the spec truncates 3.47845e-03
    assert f"{cmpa[19]:.4e}" == "8.5651e-05"
    assert f"{lr_sequence(optim_cfg(0.002, 50), 50)[49]:.4e}" == "7.8853e-06"
    assert f"{lr_sequence(optim_cfg(0.002, 200), 200)[199]:.4e}" == "4.9344e-07"


def test_linear_warmup_and_step_schedulers():
    seq = lr_sequence(optim_cfg(0.01, 10, WARMUP_EPOCH=3, WARMUP_TYPE="linear",
                                WARMUP_MIN_LR=1e-4), 5)
    # min_lr, then base * e / W, then the successor takes over at the full base LR
    assert seq[:5] == pytest.approx([1e-4, 0.01 / 3, 0.02 / 3, 0.01,
                                     0.01 * 0.5 * (1 + math.cos(math.pi / 10))])
    step = lr_sequence(optim_cfg(0.1, 10, WARMUP_EPOCH=-1, LR_SCHEDULER="single_step",
                                 STEPSIZE=(2,), GAMMA=0.5), 5)
    assert step[:5] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    multi = lr_sequence(optim_cfg(0.1, 10, WARMUP_EPOCH=-1, LR_SCHEDULER="multi_step",
                                  STEPSIZE=(1, 3), GAMMA=0.1), 4)
    assert multi[:4] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    # STEPSIZE -1 means MAX_EPOCH
    whole = lr_sequence(optim_cfg(0.1, 3, WARMUP_EPOCH=-1, LR_SCHEDULER="single_step"), 3)
    assert whole == pytest.approx([0.1, 0.1, 0.1, 0.01])


def test_scheduler_state_is_plain_and_restores_into_live_successor():
    ocfg = optim_cfg(0.002, 10)
    opt, sched = build(ocfg)
    for _ in range(4):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # no pickled scheduler object inside
    assert isinstance(state["scheduler"]["successor"], dict)

    opt2, sched2 = build(ocfg)
    successor = sched2.successor
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.successor is successor and successor.optimizer is opt2
    rest_a, rest_b = [], []
    for o, s, out in ((opt, sched, rest_a), (opt2, sched2, rest_b)):
        for _ in range(6):
            out.append(o.param_groups[0]["lr"])
            o.step()
            s.step()
    assert rest_b == rest_a
    assert [f"{x:.4e}" for x in rest_b] == TABLE[0.002][4:10]


# WARMUP_RECOUNT False, from Dassl's own build_lr_scheduler (c61a1b5, without the `verbose`
# argument that PyTorch 2.7 removed) on torch 2.13; the 11th value is printed on the last batch line.
NO_RECOUNT = {
    "cosine, constant W=1": (dict(), [
        "1.0000e-05", "2.0000e-03", "1.8544e-03", "1.6276e-03", "1.3419e-03", "1.0251e-03",
        "7.0832e-04", "4.2256e-04", "1.9577e-04", "5.0171e-05", "0.0000e+00"]),
    "cosine, linear W=2": (dict(WARMUP_EPOCH=2, WARMUP_TYPE="linear"), [
        "1.0000e-05", "1.0000e-03", "2.0000e-03", "1.7554e-03", "1.4472e-03", "1.1056e-03",
        "7.6393e-04", "4.5573e-04", "2.1115e-04", "5.4111e-05", "0.0000e+00"]),
    "single_step, constant W=2": (dict(WARMUP_EPOCH=2, LR_SCHEDULER="single_step"), [
        "1.0000e-05", "1.0000e-05"] + ["2.0000e-03"] * 8 + ["2.0000e-04"]),
}


@pytest.mark.parametrize("case", NO_RECOUNT)
def test_warmup_recount_false_gives_the_original_sequence(case):
    keys, expected = NO_RECOUNT[case]
    seq = lr_sequence(optim_cfg(0.002, 10, WARMUP_RECOUNT=False, **keys), 10)
    assert [f"{lr:.4e}" for lr in seq] == expected
    if case.startswith("cosine, constant"):  # the chainable cosine, rescaled rather than shifted
        for e, lr in enumerate(seq[1:10], start=1):
            assert lr == pytest.approx(0.002 * (1 + math.cos(math.pi * e / 10)) / (1 + math.cos(math.pi / 10)))


def test_bad_scheduler_settings_are_clear():
    with pytest.raises(ValueError, match="did you mean cosine"):
        build(optim_cfg(LR_SCHEDULER="cosin"))
    with pytest.raises(ValueError, match="OPTIM.WARMUP_TYPE"):
        build(optim_cfg(WARMUP_TYPE="exp"))
    with pytest.raises(TypeError, match="stepsize must be a list"):
        build(optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=3, WARMUP_EPOCH=-1))


def test_optimizer_choices_and_trainable_only():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    ocfg = optim_cfg()
    opt = build_optimizer(model, ocfg)
    assert isinstance(opt, torch.optim.SGD)
    params = opt.param_groups[0]["params"]
    assert len(params) == 3 and all(p.requires_grad for p in params)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 5e-4
    expected = {"adam": torch.optim.Adam, "amsgrad": torch.optim.Adam, "rmsprop": torch.optim.RMSprop,
                "radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}
    for name, cls in expected.items():
        ocfg.NAME = name
        assert type(build_optimizer(model, ocfg)) is cls
    ocfg.NAME = "amsgrad"
    assert build_optimizer(model, ocfg).param_groups[0]["amsgrad"] is True
    ocfg.NAME = "sgdd"
    with pytest.raises(ValueError, match=r"optim must be one of .*but got sgdd \(did you mean sgd\?\)"):
        build_optimizer(model, ocfg)


def test_staged_lr_gives_base_layers_a_smaller_lr():
    model = nn.Sequential()
    model.add_module("backbone", nn.Linear(3, 3))
    model.add_module("classifier", nn.Linear(3, 2))
    ocfg = optim_cfg(lr=0.1, STAGED_LR=True, NEW_LAYERS=("classifier",), BASE_LR_MULT=0.1)
    opt = build_optimizer(model, ocfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.1])
