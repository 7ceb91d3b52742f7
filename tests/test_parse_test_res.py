"""parse_test_res.py on hand-written logs in the exact CoOp/Dassl format."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import parse_test_res  # noqa: E402
from results.logparse import TEST_END_SIGNALS, metric_from_lines  # noqa: E402

HEADER = """***************
** Arguments **
***************
backbone: 
config_file: configs/trainers/MuDPT/vit_b16_base2new.yaml
dataset_config_file: configs/datasets/dtd.yaml
eval_only: {eval_only}
opts: ['DATASET.NUM_SHOTS', '16']
seed: 1
************
** Config **
************
OPTIM:
  MAX_EPOCH: 2
Loading trainer: MuDPT
Loading dataset: DescribableTextures
"""

RESULT = """=> result
* total: 864
* correct: {correct}
* accuracy: {accuracy}%
* error: {error}%
* macro_f1: {f1}%
"""


def result_block(accuracy, f1=50.0):
    return RESULT.format(correct=int(accuracy * 8.64), accuracy=accuracy,
                         error=round(100 - accuracy, 1), f1=f1)


def train_log(accuracy, f1=50.0, val_accuracy=99.9):
    """A training run with a validation result mid-training (TEST.FINAL_MODEL best_val style)."""
    return (HEADER.format(eval_only=False)
            + "epoch [1/2] batch [5/5] time 0.210 (0.234) data 0.002 (0.031) loss 1.2345 (1.3001) "
              "acc 65.6250 (62.5000) lr 2.5000e-03 eta 0:00:05\n"
            + "Evaluate on the *val* set\n" + result_block(val_accuracy)
            + "epoch [2/2] batch [5/5] time 0.210 (0.234) data 0.002 (0.031) loss 1.1000 (1.2000) "
              "acc 70.0000 (66.0000) lr 0.0000e+00 eta 0:00:00\n"
            + "Checkpoint saved to out/MultimodalDeepPromptTuning/model.pth.tar-2\n"
            + "Finish training\nDeploy the last-epoch model\nEvaluate on the *test* set\n"
            + result_block(accuracy, f1) + "Elapsed: 0:00:12\n")


def eval_only_log(accuracy):
    return (HEADER.format(eval_only=True)
            + 'Loading weights to MultimodalDeepPromptTuning from "m/model.pth.tar-2" (epoch = 2)\n'
            + "Evaluate on the *test* set\n" + result_block(accuracy))


OLD_FORMAT_LOG = (
    "epoch [10/10][5/5]\ttime 0.100 (0.120)\tdata 0.001 (0.010)\teta 0:00:00\t"
    "loss 0.5000 (0.6000)\tacc 90.0000 (88.0000)\tlr 1.000000e-05\n"
    "Finished training\nDo evaluation on test set\n=> result\n* total: 1,000\n"
    "* correct: 918\n* accuracy: 91.81%\n* error: 8.19%\n* macro_f1: 91.02%\n")

CRASHED_LOG = HEADER.format(eval_only=False) + (
    "epoch [1/2] batch [5/5] time 0.210 (0.234) data 0.002 (0.031) loss 1.2345 (1.3001) "
    "acc 65.6250 (62.5000) lr 2.5000e-03 eta 0:00:05\n")


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def seeds_dir(tmp_path):
    """seed1-3 finished, seed4 crashed, seed5 never wrote a log, a hidden folder is ignored."""
    root = str(tmp_path / "dtd" / "MuDPT" / "vit_b16_few_shot_16shots")
    for seed, acc, f1 in ((1, 65.0, 60.0), (2, 70.2, 66.0), (3, 61.3, 57.0)):
        write(f"{root}/seed{seed}/log.txt", train_log(acc, f1))
    write(f"{root}/seed4/log.txt", CRASHED_LOG)
    os.makedirs(f"{root}/seed5")
    write(f"{root}/.hidden/log.txt", train_log(10.0))
    # a rotated log of an earlier attempt is never read
    write(f"{root}/seed1/log.txt-2024-01-01-00-00-00", train_log(1.0))
    return root


def run_main(argv, capsys):
    code = parse_test_res.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_summary_is_coop_byte_format_and_reports_bad_seeds(seeds_dir, capsys):
    code, out, err = run_main([seeds_dir], capsys)
    assert out == (
        f"Parsing files in {seeds_dir}\n"
        f"file: {seeds_dir}/seed1/log.txt. accuracy: 65.00%. \n"
        f"file: {seeds_dir}/seed2/log.txt. accuracy: 70.20%. \n"
        f"file: {seeds_dir}/seed3/log.txt. accuracy: 61.30%. \n"
        "===\n"
        f"Summary of directory: {seeds_dir}\n"
        "* accuracy: 65.50% +- 3.65%\n"   # population std of 65.0, 70.2, 61.3
        "===\n")
    assert code == 0
    assert f"{seeds_dir}/seed4: log.txt has no '* accuracy: ...%' line after" in err
    assert f"{seeds_dir}/seed5: no log.txt" in err


def test_ci95_and_keyword(seeds_dir, capsys):
    _, out, _ = run_main([seeds_dir, "--ci95"], capsys)
    assert "* accuracy: 65.50% +- 4.13%\n" in out   # 1.96 * 3.6506 / sqrt(3)
    _, out, _ = run_main([seeds_dir, "--keyword", "macro_f1"], capsys)
    assert f"file: {seeds_dir}/seed2/log.txt. macro_f1: 66.00%. \n" in out
    assert "* macro_f1: 61.00% +- 3.74%\n" in out    # 60, 66, 57


def test_mid_training_validation_result_is_ignored():
    lines = train_log(42.0, val_accuracy=99.9).splitlines()
    assert metric_from_lines(lines) == 42.0
    # the last match after the end signal wins
    assert metric_from_lines(["Finish training", "* accuracy: 1.0%", "* accuracy: 2.5%"]) == 2.5
    assert metric_from_lines(["* accuracy: 1.0%", "Finish training x"]) is None


def test_test_log_and_underscore_aliases(tmp_path, capsys):
    root = str(tmp_path / "test_new")
    write(f"{root}/seed1/log.txt", eval_only_log(55.5))
    write(f"{root}/seed2/log.txt", eval_only_log(58.5))
    code, out, err = run_main([root], capsys)  # no "Finish training" in eval-only logs
    assert code == 1 and out == f"Parsing files in {root}\n"
    assert f"Error: nothing found in {root}" in err
    for argv in ([root, "--test-log"], ["--directory", root, "--test_log"]):
        code, out, _ = run_main(argv, capsys)
        assert code == 0
        assert "* accuracy: 57.00% +- 1.50%\n" in out


def test_old_dassl_format_finished_training(tmp_path, capsys):
    root = str(tmp_path / "maple")
    write(f"{root}/seed1/log.txt", OLD_FORMAT_LOG)
    code, out, _ = run_main([root], capsys)
    assert code == 0
    assert f"file: {root}/seed1/log.txt. accuracy: 91.81%. \n" in out
    assert "* accuracy: 91.81% +- 0.00%\n" in out


def test_multi_exp(tmp_path, seeds_dir, capsys):
    root = os.path.dirname(seeds_dir)          # .../MuDPT with two experiments
    other = os.path.join(root, "vit_b16_other_16shots")
    write(f"{other}/seed1/log.txt", train_log(80.0))
    write(f"{other}/seed2/log.txt", train_log(82.0))
    code, out, _ = run_main([root, "--multi-exp"], capsys)
    assert code == 0
    assert out.count("Summary of directory") == 2
    assert f"Summary of directory: {other}\n* accuracy: 81.00% +- 1.00%\n" in out
    assert out.endswith("Average performance\n* accuracy: 73.25%\n")  # (65.50 + 81.00) / 2


def test_csv_and_json_outputs(seeds_dir, tmp_path, capsys):
    csv_path, json_path = str(tmp_path / "s.csv"), str(tmp_path / "s.json")
    run_main([seeds_dir, "--csv", csv_path, "--json", json_path], capsys)
    with open(csv_path) as f:
        rows = f.read().splitlines()
    assert rows[0] == "directory,seed_folder,log,accuracy"
    assert rows[2] == f"{seeds_dir},seed2,{seeds_dir}/seed2/log.txt,70.2"
    with open(json_path) as f:
        data = json.load(f)
    assert data["seeds"] == {"seed1": 65.0, "seed2": 70.2, "seed3": 61.3}
    assert data["mean"] == pytest.approx(65.5) and data["std"] == pytest.approx(3.6505707)
    assert sorted(os.path.basename(p["path"]) for p in data["problems"]) == ["seed4", "seed5"]


def test_bad_directory_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "parse_test_res.py"),
                             str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_cli_stdout_bytes(seeds_dir):
    """Run as a program: stdout carries only CoOp's lines, warnings go to stderr."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "parse_test_res.py"), seeds_dir],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.splitlines()[-2] == "* accuracy: 65.50% +- 3.65%"
    assert "Warning" not in result.stdout and "Warning" in result.stderr


def test_end_signals_for_test_logs():
    assert metric_from_lines(eval_only_log(33.3).splitlines(), signals=TEST_END_SIGNALS) == 33.3
