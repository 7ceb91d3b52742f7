"""Registry, logger tee, checkpoints, evaluator, metrics and meters."""
import logging
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn

from dassl.config import get_cfg_default
from dassl.evaluation import Classification, build_evaluator, macro_f1_score
from dassl.metrics import compute_accuracy
from dassl.utils import (
    AverageMeter, MetricMeter, Registry, check_availability, close_logger, count_num_param,
    listdir_nohidden, load_checkpoint, read_json, save_checkpoint, setup_logger,
    trainable_state_dict, write_json,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ registry
def test_registry_register_get_and_errors():
    reg = Registry("TRAINER")

    @reg.register()
    class CoOp:
        pass

    reg.register(type("CoCoOp", (), {}))
    assert reg.get("CoOp") is CoOp and reg.registered_names() == ["CoOp", "CoCoOp"]
    with pytest.raises(KeyError, match='An object named "CoOp" was already registered in "TRAINER" registry'):
        reg.register(CoOp)
    reg.register(CoOp, force=True)
    with pytest.raises(KeyError) as info:
        reg.get("Coop")
    msg = str(info.value)
    assert 'Object name "Coop" does not exist in "TRAINER" registry' in msg
    assert 'did you mean "CoOp"' in msg and "`trainers/`" in msg


def test_check_availability_message():
    with pytest.raises(ValueError) as info:
        check_availability("OxfordPet", ["Caltech101", "OxfordPets", "Food101"])
    msg = str(info.value)
    assert msg.startswith("The requested one is expected to belong to ['Caltech101', 'OxfordPets', "
                          "'Food101'], but got [OxfordPet] (do you mean [OxfordPets]?)")
    assert "`datasets/` package" in msg and "`trainers/` package" in msg
    check_availability("Food101", ["Food101"])  # no error
    with pytest.raises(ValueError, match=r"do you mean \[ba\]"):  # tie: the last one wins
        check_availability("a", ["ab", "ba"])


# ------------------------------------------------------------------ logger
def test_logger_tees_stdout_and_stderr_and_timestamps(tmp_path):
    handlers = list(logging.getLogger().handlers)
    path = setup_logger(str(tmp_path))
    try:
        print("hello stdout")
        sys.stderr.write("hello stderr\n")
    finally:
        close_logger()
    assert path == str(tmp_path / "log.txt")
    text = (tmp_path / "log.txt").read_text()
    assert "hello stdout\n" in text and "hello stderr\n" in text
    second = setup_logger(str(tmp_path))
    close_logger()
    assert os.path.basename(second).startswith("log.txt-20")  # the old log is kept
    assert (tmp_path / "log.txt").read_text() == text
    assert type(sys.stdout).__name__ != "Logger" and type(sys.stderr).__name__ != "Logger"
    assert logging.root.manager.disable == 0 and logging.getLogger().handlers == handlers
    explicit = setup_logger(str(tmp_path / "sub" / "run.log"))
    close_logger()
    assert explicit.endswith(os.path.join("sub", "run.log"))


def test_uncaught_exception_lands_in_log_and_no_side_imports(tmp_path):
    code = (
        "import sys, logging; sys.path.insert(0, %r)\n"
        "import dassl.engine, dassl.data, dassl.data.datasets, dassl.evaluation\n"
        "from dassl.utils import setup_logger\n"
        "assert 'wilds' not in sys.modules and 'sklearn' not in sys.modules\n"
        "assert 'tensorboard' not in sys.modules and logging.root.manager.disable == 0\n"
        "setup_logger(%r)\n"
        "print('before crash')\n"
        "raise RuntimeError('boom in training')\n" % (ROOT, str(tmp_path))
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    log = (tmp_path / "log.txt").read_text()
    assert "before crash" in log
    assert "Traceback" in log and "RuntimeError: boom in training" in log


# ------------------------------------------------------------------ checkpoints
class Net(nn.Module):
    class_dependent_buffers = ("token_prefix", "my_classes")

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(4, 4)
        self.ctx = nn.Parameter(torch.randn(2, 4))
        self.register_buffer("token_prefix", torch.zeros(3, 4))
        self.register_buffer("my_classes", torch.zeros(3))
        self.register_buffer("tokenized_prompts", torch.zeros(3))  # not class-dependent here
        self.frozen.requires_grad_(False)


def test_trainable_state_dict_uses_module_declared_class_buffers():
    keys = sorted(trainable_state_dict(Net()))
    assert keys == ["ctx", "tokenized_prompts"]
    wrapped = nn.DataParallel(Net())
    assert sorted(trainable_state_dict(wrapped)) == ["ctx", "tokenized_prompts"]


def test_save_checkpoint_is_atomic_and_points_to_latest(tmp_path, capsys):
    state = {"state_dict": OrderedDict([("module.ctx", torch.ones(2))]), "epoch": 3,
             "optimizer": None, "scheduler": None, "val_result": 71.5}
    save_checkpoint(state, str(tmp_path), is_best=True)
    out = capsys.readouterr().out
    assert f"Checkpoint saved to {tmp_path / 'model.pth.tar-3'}" in out
    assert f'Best checkpoint saved to "{tmp_path / "model-best.pth.tar"}"' in out
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-3"]
    assert (tmp_path / "checkpoint").read_text() == "model.pth.tar-3\n"
    loaded = load_checkpoint(str(tmp_path / "model-best.pth.tar"))
    assert list(loaded["state_dict"]) == ["ctx"] and loaded["val_result"] == 71.5


class Legacy:
    """Stands in for a pickled scheduler object in an original-engine checkpoint."""


def test_load_checkpoint_rejects_pickles_unless_opted_in(tmp_path, monkeypatch):
    path = str(tmp_path / "legacy.pth.tar")
    torch.save({"state_dict": {}, "scheduler": Legacy()}, path)
    monkeypatch.delenv("DASSL_ALLOW_PICKLE", raising=False)
    with pytest.raises(RuntimeError, match="DASSL_ALLOW_PICKLE=1"):
        load_checkpoint(path)
    with pytest.warns(UserWarning, match="trust"):
        assert isinstance(load_checkpoint(path, allow_pickle=True)["scheduler"], Legacy)
    monkeypatch.setenv("DASSL_ALLOW_PICKLE", "1")
    with pytest.warns(UserWarning):
        assert isinstance(load_checkpoint(path)["scheduler"], Legacy)
    with pytest.raises(FileNotFoundError, match='File is not found at ".*nope"'):
        load_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="File path is None"):
        load_checkpoint(None)


# ------------------------------------------------------------------ files, meters
def test_json_and_listdir(tmp_path):
    write_json({"a": [1, 2]}, str(tmp_path / "sub" / "x.json"))
    assert (tmp_path / "sub" / "x.json").read_text() == '{\n    "a": [\n        1,\n        2\n    ]\n}'
    assert read_json(str(tmp_path / "sub" / "x.json")) == {"a": [1, 2]}
    (tmp_path / ".hidden").write_text("")
    (tmp_path / "b").write_text("")
    assert listdir_nohidden(str(tmp_path), sort=True) == ["b", "sub"]
    assert [p for p in os.listdir(tmp_path / "sub") if p.endswith(".tmp")] == []


def test_meters():
    m = AverageMeter()
    m.update(torch.tensor(2.0))
    m.update(4.0, n=3)
    assert (m.val, m.avg, m.count) == (4.0, 3.5, 4)
    mm = MetricMeter()
    mm.update({"loss": torch.tensor(1.5), "acc": 50.0})
    mm.update({"loss": 0.5, "acc": 100.0})
    assert str(mm) == "loss 0.5000 (1.0000) acc 100.0000 (75.0000)"
    mm.update(None)
    with pytest.raises(TypeError, match="must be a dictionary"):
        mm.update(3)
    assert count_num_param(nn.Linear(3, 2)) == 8
    with pytest.raises(ValueError):
        count_num_param()


# ------------------------------------------------------------------ evaluation
def test_macro_f1_matches_sklearn_over_present_labels():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y_true = rng.integers(0, 6, size=50)
        y_pred = rng.integers(0, 8, size=50)  # predicts classes absent from y_true too
        expected = f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true))
        assert macro_f1_score(y_true, y_pred) == pytest.approx(expected)


def test_classification_block_per_class_and_cmat(tmp_path, capsys):
    cfg = get_cfg_default()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.PER_CLASS_RESULT = True
    cfg.TEST.COMPUTE_CMAT = True
    ev = build_evaluator(cfg, lab2cname={0: "cat", 1: "dog"})
    assert isinstance(ev, Classification)
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    ev.process(scores, torch.tensor([0, 1, 1, 1]))
    results = ev.evaluate()
    out = capsys.readouterr().out
    assert "Loading evaluator: Classification" in out
    assert ("=> result\n* total: 4\n* correct: 2\n* accuracy: 50.0%\n* error: 50.0%\n"
            "* macro_f1: 50.0%\n") in out
    assert "* class: 0 (cat)\ttotal: 1\tcorrect: 1\tacc: 100.0%" in out
    assert "* class: 1 (dog)\ttotal: 3\tcorrect: 1\tacc: 33.3%" in out
    assert "* average: 66.7%" in out
    assert list(results) == ["accuracy", "error_rate", "macro_f1", "perclass_accuracy"]
    cmat = torch.load(tmp_path / "cmat.pt", weights_only=True)
    assert torch.allclose(cmat, torch.tensor([[1.0, 0.0], [2 / 3, 1 / 3]], dtype=cmat.dtype))
    ev.reset()
    ev.process(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert ev.evaluate()["accuracy"] == 100.0
    bad = get_cfg_default()
    bad.TEST.EVALUATOR = "Clasification"
    with pytest.raises(ValueError, match=r"do you mean \[Classification\]"):
        build_evaluator(bad)


def test_compute_accuracy_topk():
    out = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05]])
    top1, top2 = compute_accuracy((out,), torch.tensor([2, 0]), topk=(1, 2))
    assert top1.item() == pytest.approx(50.0) and top2.item() == pytest.approx(100.0)


def test_load_trainable_state_dict_is_strict_over_the_saved_subset():
    from dassl.utils import load_trainable_state_dict

    src, dst = Net(), Net()
    full = src.state_dict()  # a legacy full checkpoint: frozen weights included
    full["token_prefix"] = torch.full((5, 4), 9.0)  # other class set: ignored
    load_trainable_state_dict(dst, full)
    assert torch.equal(dst.frozen.weight, src.frozen.weight) and torch.equal(dst.ctx, src.ctx)
    assert torch.all(dst.token_prefix == 0)
    with pytest.raises(RuntimeError, match=r"missing keys \['ctx'\]"):
        load_trainable_state_dict(dst, {"tokenized_prompts": torch.zeros(3)})
    with pytest.raises(RuntimeError, match=r"unexpected keys \['extra'\]"):
        load_trainable_state_dict(dst, {**trainable_state_dict(src), "extra": torch.zeros(1)})


def test_load_pretrained_weights_keeps_matching_tensors(tmp_path, capsys):
    from dassl.utils import load_pretrained_weights

    src = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    path = str(tmp_path / "w.pth")
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    sd["module.1.weight"] = torch.zeros(5, 5)  # wrong shape: discarded
    torch.save({"state_dict": sd}, path)
    dst = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    before = dst[1].weight.clone()
    load_pretrained_weights(dst, path)
    out = capsys.readouterr().out
    assert f"Successfully loaded pretrained weights from {path}" in out
    assert "Layers discarded due to unmatched keys or size: ['1.weight']" in out
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[1].weight, before)


def test_set_deterministic_switches_torch_flags():
    from dassl.utils import set_deterministic, set_random_seed

    old = torch.are_deterministic_algorithms_enabled()
    try:
        set_deterministic()
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(old)
        torch.backends.cudnn.deterministic = False
    set_random_seed(3)
    a = (np.random.rand(), torch.rand(1).item())
    set_random_seed(3)
    assert (np.random.rand(), torch.rand(1).item()) == a
