"""A killed or interrupted run resumes bit for bit: RNG states, scaler and the position inside
the epoch travel with the rolling checkpoint (with random crops and flips, so the data order
and augmentations must continue exactly)."""
import os
import signal

import pytest
import torch

from dassl.engine import TRAINER_REGISTRY
from dassl.engine.interrupt import TrainingInterrupted
from engine_toy import Interrupted, ToyTrainer, make_cfg, make_toy_data, run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_toy_data(tmp_path_factory.mktemp("data"))


@TRAINER_REGISTRY.register(force=True)
class DropoutToyTrainer(ToyTrainer):
    """Its step draws from the global RNG (as dropout does), so a resume must restore the RNG
    state of the moment it stopped, not only replay the data order."""

    def forward_backward(self, batch):
        batch["img"] = torch.nn.functional.dropout(batch["img"], p=0.2, training=True)
        return super().forward_backward(batch)


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """An uninterrupted 3-epoch run (3 batches per epoch)."""
    out = tmp_path_factory.mktemp("straight")
    trainer, log = run(make_cfg(data_root, out, trainer="DropoutToyTrainer", max_epoch=3))
    return trainer, log


def final_state(out):
    return torch.load(os.path.join(out, "prompt_learner", "model.pth.tar-3"), weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@TRAINER_REGISTRY.register(force=True)
class KilledToyTrainer(DropoutToyTrainer):
    """Dies (as under SIGKILL) right after epoch 2 was saved."""

    def after_epoch(self):
        super().after_epoch()
        if self.epoch == 1:
            raise Interrupted


@TRAINER_REGISTRY.register(force=True)
class SignalledToyTrainer(DropoutToyTrainer):
    """Receives SIGTERM in the middle of the step of epoch 2, batch 2."""

    def forward_backward(self, batch):
        if self.epoch == 1 and self.batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().forward_backward(batch)


def test_a_killed_run_resumes_from_the_rolling_checkpoint_bitwise(data_root, tmp_path, straight):
    out = tmp_path / "killed"
    with pytest.raises(Interrupted):
        run(make_cfg(data_root, out, trainer="KilledToyTrainer", max_epoch=3))
    folder = out / "prompt_learner"
    # CHECKPOINT_FREQ 0 keeps only the last epoch as model.pth.tar-N; the rolling file is there
    assert sorted(os.listdir(folder)) == ["checkpoint", "model-last.pth.tar"]
    saved = torch.load(folder / "model-last.pth.tar", weights_only=True)
    assert saved["epoch"] == 2 and {"torch", "numpy", "random"} <= set(saved["rng_state"])

    trainer, log = run(make_cfg(data_root, out, trainer="DropoutToyTrainer", max_epoch=3))
    assert "Previous epoch: 2" in log and "epoch [3/3] batch [1/3]" in log and "epoch [2/3]" not in log
    assert_same_weights(final_state(out), final_state(straight[0].output_dir))
    # the numbered checkpoint replaces the rolling one
    assert sorted(os.listdir(folder)) == ["checkpoint", "model.pth.tar-3"]
    losses = [line.split(" loss ")[1].split()[0] for line in log.splitlines() if line.startswith("epoch [3/3]")]
    straight_losses = [line.split(" loss ")[1].split()[0] for line in straight[1].splitlines()
                       if line.startswith("epoch [3/3]")]
    assert losses == straight_losses


def test_sigterm_mid_epoch_stops_after_the_step_and_resumes_bitwise(data_root, tmp_path, straight):
    out = tmp_path / "signalled"
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        run(make_cfg(data_root, out, trainer="SignalledToyTrainer", max_epoch=3))
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    assert info.value.signum == signal.SIGTERM
    assert "SIGTERM after epoch 2 batch 2/3" in str(info.value) and "same command" in str(info.value)
    saved = torch.load(out / "prompt_learner" / "model-last.pth.tar", weights_only=True)
    assert saved["epoch"] == 1 and saved["batches_done"] == 2

    _, log = run(make_cfg(data_root, out, trainer="DropoutToyTrainer", max_epoch=3))
    assert "Resuming inside epoch 2 after batch 2" in log
    assert "epoch [2/3] batch [3/3]" in log and "epoch [2/3] batch [2/3]" not in log
    assert_same_weights(final_state(out), final_state(straight[0].output_dir))


def test_a_resumed_run_refuses_a_checkpoint_of_another_run(data_root, tmp_path):
    out = tmp_path / "other"
    with pytest.raises(Interrupted):
        run(make_cfg(data_root, out, trainer="KilledToyTrainer", max_epoch=3),
            identity={"trainer": "ToyTrainer", "seed": 1})
    with pytest.raises(ValueError, match=r"seed: 1 there, 2 here.*refusing to resume"):
        run(make_cfg(data_root, out, max_epoch=3, SEED="2"), identity={"trainer": "ToyTrainer", "seed": 2})
