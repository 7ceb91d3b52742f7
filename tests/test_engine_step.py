"""The engine owns the training step and the training state: ``model_backward_and_update`` scales
the loss and steps every registered optimiser through the trainer's gradient scaler, and
``load_training_state`` hands a trainer, on resume, the checkpoint the engine has loaded. So no
trainer reaches into the engine's optimisers or reads a checkpoint itself."""
import ast
import os

import pytest
import torch
import torch.nn as nn

from dassl.engine import TRAINER_REGISTRY
from dassl.engine.trainer import TrainerBase
from engine_toy import Interrupted, ToyTrainer, make_cfg, make_toy_data, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT_READERS = {"load_checkpoint", "read_latest_checkpoint", "resume_from_checkpoint", "restore_checkpoint"}


# --------------------------------------------------------------------- trainers stay out of the engine
def trainer_sources():
    for folder, _, files in os.walk(os.path.join(ROOT, "trainers")):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    yield os.path.relpath(path, ROOT), ast.parse(f.read(), path)


# Runs only under the original Dassl engine, which has no checkpoint loading these trainers can use.
ORIGINAL_ENGINE_ONLY = "load_model_as_released"


def engine_intrusions(tree):
    """(line, what) for each place a trainer module steps optimisers or reads checkpoints itself."""
    exempt = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
              and node.name == ORIGINAL_ENGINE_ONLY for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        if isinstance(node, ast.Attribute) and node.attr == "_optims":
            yield node.lineno, "reads the engine's _optims (call model_backward_and_update)"
        elif isinstance(node, ast.Name) and node.id in CHECKPOINT_READERS:
            yield node.lineno, f"calls {node.id} (extend training_state/load_training_state instead)"
        elif isinstance(node, ast.alias) and node.name in CHECKPOINT_READERS:
            yield getattr(node, "lineno", 0), f"imports {node.name} (extend training_state/load_training_state)"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.split("/")[-1] == "checkpoint":
            yield node.lineno, 'opens the "checkpoint" pointer file (the engine resumes; use load_training_state)'
        elif isinstance(node, ast.FunctionDef) and node.name == "resume_model_if_exist":
            yield node.lineno, "overrides resume_model_if_exist (override load_training_state instead)"


def test_no_trainer_steps_optimisers_or_reads_checkpoints_itself():
    problems = [f"{where}:{line} {what}" for where, tree in trainer_sources() for line, what in engine_intrusions(tree)]
    assert not problems, "\n".join(problems)


def test_the_source_check_catches_what_it_is_for():
    intruder = ast.parse(
        "from dassl.utils import load_checkpoint\n"
        "class T:\n"
        "    def resume_model_if_exist(self, d):\n"
        "        load_checkpoint(open(os.path.join(d, 'checkpoint')).read())\n"
        "        self.scaler.step(self._optims['m'])\n")
    found = sorted(what.split(" (")[0] for _, what in engine_intrusions(intruder))
    assert found == ["calls load_checkpoint", "imports load_checkpoint", 'opens the "checkpoint" pointer file',
                     "overrides resume_model_if_exist", "reads the engine's _optims"]


# --------------------------------------------------------------------- the step with a gradient scaler
class TwoModelTrainer(TrainerBase):
    """Two registered models, each with its own SGD optimiser, and a loss over both."""

    def __init__(self, scaler=None):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(3, 2), nn.Linear(3, 2)
        for name in ("first", "second"):
            model = getattr(self, name)
            self.register_model(name, model, torch.optim.SGD(model.parameters(), lr=0.1), None)
        self.scaler = scaler

    def loss(self, x):
        return (self.first(x) * self.second(x)).sum()


def plain_sgd_step(trainer, x, lr=0.1):
    """The expected parameters after one step: SGD on the unscaled gradients, written out."""
    params = list(trainer.first.parameters()) + list(trainer.second.parameters())
    grads = torch.autograd.grad(trainer.loss(x), params)
    return [torch.add(p, g, alpha=-lr).detach() for p, g in zip(params, grads)]


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def test_the_step_scales_the_loss_and_steps_every_optimiser_through_the_scaler():
    trainer = TwoModelTrainer(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1))
    x = torch.randn(4, 3)
    expected = plain_sgd_step(trainer, x)
    scaled = []
    trainer.first.weight.register_hook(lambda g: scaled.append(g.clone()))  # the gradient backward produced
    trainer.model_backward_and_update(trainer.loss(x))
    after = list(trainer.first.parameters()) + list(trainer.second.parameters())
    for got, want in zip(after, expected):
        assert torch.equal(got.detach(), want)  # both optimisers stepped, on unscaled gradients
    assert torch.equal(scaled[0], trainer.first.weight.grad * 2.0 ** 10)  # backward ran on the scaled loss
    assert trainer.scaler.get_scale() == 2.0 ** 11  # update() ran once: one clean step grows the scale


def test_a_non_finite_gradient_skips_that_optimiser_and_backs_the_scale_off():
    trainer = TwoModelTrainer(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10))
    x = torch.randn(4, 3)
    expected_first = plain_sgd_step(trainer, x)[:2]
    second_before = snapshot(trainer.second)
    trainer.second.weight.register_hook(lambda g: g * float("inf"))
    trainer.model_backward_and_update(trainer.loss(x))
    for got, want in zip(trainer.first.parameters(), expected_first):
        assert torch.equal(got.detach(), want)
    for got, before in zip(trainer.second.parameters(), second_before):
        assert torch.equal(got.detach(), before)  # its step was skipped by the scaler
    assert trainer.scaler.get_scale() == 2.0 ** 9


def test_without_a_scaler_the_step_is_plain_sgd_and_a_bad_loss_stops_it():
    trainer = TwoModelTrainer()
    x = torch.randn(4, 3)
    expected = plain_sgd_step(trainer, x)
    trainer.model_backward_and_update(trainer.loss(x))
    for got, want in zip(list(trainer.first.parameters()) + list(trainer.second.parameters()), expected):
        assert torch.equal(got.detach(), want)
    with pytest.raises(FloatingPointError, match="infinite or NaN"):
        trainer.model_backward_and_update(trainer.loss(x) * float("nan"))


# --------------------------------------------------------------------- the load-state hook
@TRAINER_REGISTRY.register(force=True)
class CountingToyTrainer(ToyTrainer):
    """Counts its steps; the count travels in the checkpoint through the training-state hooks."""

    steps = 0
    restored = None

    def forward_backward(self, batch):
        self.steps += 1
        return super().forward_backward(batch)

    def training_state(self):
        return dict(super().training_state(), toy_steps=self.steps)

    def load_training_state(self, state, source="The checkpoint"):
        super().load_training_state(state, source)
        self.steps = self.restored = state["toy_steps"]


@TRAINER_REGISTRY.register(force=True)
class CrashingCountingToyTrainer(CountingToyTrainer):
    def after_epoch(self):
        super().after_epoch()
        if self.epoch == 1:
            raise Interrupted


def test_resume_hands_the_loaded_checkpoint_to_load_training_state(tmp_path):
    data_root = make_toy_data(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        run(make_cfg(data_root, out, trainer="CrashingCountingToyTrainer", max_epoch=3))
    trainer, log = run(make_cfg(data_root, out, trainer="CountingToyTrainer", max_epoch=3))
    assert "will resume training" in log
    assert trainer.restored == 6  # 2 epochs x 3 batches, as saved
    assert trainer.steps == 9


def test_promptsrc_names_a_checkpoint_without_its_aggregation_state():
    from trainers.promptsrc import PromptSRC
    trainer = object.__new__(PromptSRC)
    TrainerBase.__init__(trainer)
    with pytest.raises(RuntimeError, match=r'Checkpoint "x/model.pth.tar-2" holds no Gaussian prompt aggregation'):
        trainer.load_training_state({"epoch": 2}, source='Checkpoint "x/model.pth.tar-2"')
