"""tools/compare_runs.py on real runs (tiny CLIP, generated data) and on the original log format."""
import json
import re
import shutil

import pytest

import train
from dassl.utils.logger import close_logger
from datasets.fake import make_fake_dataset
from tool_modules import load_tool

compare_runs = load_tool("compare_runs")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_clip_path):
    """Three 2-epoch CoOp runs, seed 1: two alike, one with a 2-epoch warm-up."""
    tmp = tmp_path_factory.mktemp("compare")
    data = str(tmp / "data")
    make_fake_dataset("caltech101", data, num_classes=4, images_per_class=8)
    folders = {}
    for name, warmup in (("a", "1"), ("b", "1"), ("warmup2", "2")):
        folders[name] = str(tmp / name)
        train.main(["--root", data, "--seed", "1", "--trainer", "CoOp",
                    "--dataset-config-file", "configs/datasets/caltech101.yaml",
                    "--config-file", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml", "--output-dir", folders[name],
                    "MODEL.BACKBONE.PATH", tiny_clip_path, "DATALOADER.NUM_WORKERS", "0",
                    "DATASET.NUM_SHOTS", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAIN.PRINT_FREQ", "1",
                    "OPTIM.MAX_EPOCH", "2", "OPTIM.WARMUP_EPOCH", warmup])
        close_logger()
    return folders


def compare(capsys, a, b):
    code = compare_runs.main([a, b])
    return code, capsys.readouterr()


def test_same_seed_and_config_compare_equal(runs, capsys):
    code, out = compare(capsys, runs["a"], runs["b"] + "/log.txt")
    assert code == 0, out.out
    assert "The runs match (config, dataset summary, few-shot sample, transforms, model, lr per epoch, " \
           "loss per printed iteration, result)." in out.out
    assert "OUTPUT_DIR differs: a path, not compared" in out.out


def test_an_lr_difference_is_found_at_its_first_epoch(runs, capsys):
    code, out = compare(capsys, runs["a"], runs["warmup2"])
    lines = out.out.splitlines()
    assert code == 1
    assert "  OPTIM.WARMUP_EPOCH: 1 | 2" in lines
    # Epoch 1 warms up at 1e-5 in both; in epoch 2 one run is at the cosine LR, the other still warming up.
    assert "LR per epoch: 1 of 2 epochs differ" in lines
    assert lines[lines.index("LR per epoch: 1 of 2 epochs differ") + 1] == "  epoch 2: 2.0000e-03 | 1.0000e-05"
    # Losses agree while the weights do (epoch 1, and the first line of epoch 2), then part.
    assert "Loss per printed iteration: 1 of 4 lines differ" in lines
    assert "The runs differ. First divergence: config OPTIM.WARMUP_EPOCH: 1 | 2." in lines
    assert "LR at epoch 2" in out.out and "loss at epoch 2 batch 2" in out.out


def to_original_format(text):
    """The same log as Dassl < 0.6.1 prints it: tab-separated epoch lines, 'Finished training'."""
    def old_line(match):
        epoch, batches, rest = match.group(1), match.group(2), match.group(3)
        meters = dict((m[0], f"{m[0]} {m[1]} ({m[2]})") for m in re.findall(r"(\S+) (\S+) \(([^)]*)\)", rest))
        lr = float(re.search(r"lr (\S+)", rest).group(1))
        losses = " ".join(v for k, v in meters.items() if k not in ("time", "data"))
        return f"epoch {epoch}{batches}\t{meters['time']}\t{meters['data']}\teta 0:00:01\t{losses}\tlr {lr:.6e}"
    text = re.sub(r"^epoch (\[\d+/\d+\]) batch (\[\d+/\d+\]) (.*)$", old_line, text, flags=re.M)
    return text.replace("Finish training", "Finished training")


def test_the_original_engines_log_format_compares_too(runs, tmp_path, capsys):
    with open(f"{runs['a']}/log.txt") as f:
        text = f.read()
    old = tmp_path / "old.txt"
    old.write_text(to_original_format(text))
    assert "\tlr " in old.read_text() and "epoch [1/2] batch" not in old.read_text()
    code, out = compare(capsys, str(old), runs["b"])
    assert code == 0, out.out
    assert "  (facts of A from its log lines, of B from its run_facts.json)" in out.out
    changed = tmp_path / "changed.txt"
    changed.write_text(to_original_format(text).replace("lr 2.000000e-03", "lr 2.500000e-03"))
    code, out = compare(capsys, str(changed), runs["b"])
    assert code == 1 and "  epoch 2: 2.5000e-03 | 2.0000e-03" in out.out


def test_model_facts_come_from_run_facts_json(runs, tmp_path, capsys):
    """The Model section compares the runs' run_facts.json; the log lines only for a run without one."""
    edited = shutil.copytree(runs["b"], tmp_path / "b")
    facts = json.loads((edited / "run_facts.json").read_text())
    assert (facts["trainable_params"], facts["n_ctx"], facts["prompt_text"]) == (256, 4, "a photo of a")
    facts.update(precision="amp", trainable_params=1234567, prompt_text="a good photo of a")
    (edited / "run_facts.json").write_text(json.dumps(facts))
    code, out = compare(capsys, runs["a"], str(edited))
    lines = out.out.splitlines()
    assert code == 1
    model = lines[lines.index("Model: differs") + 1:lines.index("Model: differs") + 4]
    assert model == ["  # trainable params: 256 | 1,234,567", "  Precision: fp32 | amp",
                     '  Initial context: a photo of a | a good photo of a']
    assert "First divergence: model, # trainable params: 256 | 1,234,567." in out.out

    (edited / "run_facts.json").unlink()  # an older run: its printed lines, as they were
    code, out = compare(capsys, runs["a"], str(edited))
    assert "Model: same" in out.out.splitlines()
    assert "  (facts of A from its run_facts.json, of B from its log lines)" in out.out


def test_bad_input(tmp_path, runs, capsys):
    code, out = compare(capsys, str(tmp_path / "none"), runs["a"])
    assert code == 2 and "does not exist" in out.err
    empty = tmp_path / "empty_run"
    empty.mkdir()
    code, out = compare(capsys, str(empty), runs["a"])
    assert code == 2 and "holds no log.txt" in out.err
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    code, out = compare(capsys, runs["a"], str(notes))
    assert code == 2 and "is not the log of a run" in out.err
    broken = shutil.copytree(runs["b"], tmp_path / "broken")
    (broken / "run_facts.json").write_text("[]")
    code, out = compare(capsys, runs["a"], str(broken))
    assert code == 2 and "is not a run_facts.json of this toolbox" in out.err and "Delete it" in out.err
