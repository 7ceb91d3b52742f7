"""Every entry point answers --help and a wrong flag before torch loads (the import takes seconds).

Each command runs as a user types it, under ``python -X importtime``, which lists every module
the process imported on stderr.
"""
import glob
import os
import re
import subprocess
import sys

import pytest
from tool_modules import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_IMPORT = re.compile(r"^import time:.*\|\s*torch$", re.MULTILINE)


def has_main(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return 'if __name__ == "__main__":' in f.read()


def entry_points():
    tools = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tools", "*.py")))
    return [p for p in ["train.py", "predict.py", "parse_test_res.py", *tools] if has_main(p)]


def run_with_import_log(script, *args):
    return subprocess.run([sys.executable, "-X", "importtime", script, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_the_known_entry_points_are_checked():
    points = entry_points()
    for expected in ("train.py", "parse_test_res.py", "tools/sweep.py", "tools/compare_runs.py",
                     "tools/benchmark.py", "tools/make_tiny_clip.py", "tools/make_fake_dataset.py",
                     "tools/check_datasets.py", "tools/pretrain_mini_clip.py", "tools/gpu_check.py"):
        assert expected in points


@pytest.mark.parametrize("script", entry_points())
def test_help_answers_without_torch(script):
    done = run_with_import_log(script, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")
    assert not TORCH_IMPORT.search(done.stderr), f"{script} --help imports torch"


@pytest.mark.parametrize("script", entry_points())
def test_a_wrong_flag_is_refused_without_torch(script):
    done = run_with_import_log(script, "--no-such-flag")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error:" in done.stderr
    assert not TORCH_IMPORT.search(done.stderr), f"{script} --no-such-flag imports torch"


def test_the_import_log_shows_a_torch_import():
    """The check above would see torch: a command that imports it is caught."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch"], capture_output=True,
                          text=True, timeout=120)
    assert TORCH_IMPORT.search(done.stderr)


def test_values_checked_after_the_parse_are_still_usage_errors(tmp_path, capsys):
    """Choices that need the model code (families, world domains) are checked once it is imported."""
    with pytest.raises(SystemExit) as info:
        load_tool("make_tiny_clip").main([str(tmp_path / "clip.pt"), "--family", "nosuch"])
    assert info.value.code == 2
    assert "--family nosuch: unknown family; choose one of openai, openclip" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        load_tool("pretrain_mini_clip").parse_args(["--eval-domains", "pretrain", "nowhere"])
    assert info.value.code == 2
    assert "--eval-domains: unknown nowhere; choose from pretrain, benchmark" in capsys.readouterr().err
    assert load_tool("pretrain_mini_clip").parse_args([]).eval_domains == ["pretrain", "benchmark"]


def test_make_fake_dataset_help_names_the_datasets_it_makes():
    """Its --help lists configs/datasets (read without torch): the same names as datasets.fake."""
    from datasets.fake import FAKE_DATASET_NAMES

    assert load_tool("make_fake_dataset").dataset_config_names() == sorted(FAKE_DATASET_NAMES)
