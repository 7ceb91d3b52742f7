"""Own data (ImageFolder) end to end: named by its tag in output folders and tables, bad
input through train.py ends in one message and exit code 2."""
import json
import os
import re
import shutil

import pytest

import parse_test_res
import train
from dassl.utils.logger import close_logger
from datasets.fake import make_fake_dataset
from test_scripts import make_fake_repo, recorded_calls, run_script


@pytest.fixture
def repo(tmp_path):
    repo = make_fake_repo(tmp_path)
    with open(os.path.join(repo, "configs", "datasets", "image_folder.yaml"), "w") as f:
        f.write('DATASET:\n  NAME: "ImageFolder"\n')
    for name in ("my_flowers", "my_birds"):
        os.makedirs(os.path.join(repo, name))
    return repo


def dry_run(repo, *args, **env):
    result = run_script(repo, "mudpt", *args, DRY_RUN="1", **env)
    assert result.returncode == 0, result.stderr
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


def test_scripts_name_own_data_folders_by_the_tag(repo):
    data = os.path.join(repo, "my_flowers")
    lines = dry_run(repo, "few_shot", "image_folder", 1, DATA=data + "/")
    assert lines["output_dir"].endswith("/output/my_flowers/MuDPT/vit_b16_bz4_ep10_nctx4_depth12_16shots/seed1")
    assert "DATASET.TAG my_flowers" in lines["command"]

    lines = dry_run(repo, "base2new_test", "image_folder", 1, DATA=data, TAG="flowers_v2")
    assert "/base2new/test_new/flowers_v2/shots_16/" in lines["output_dir"]
    assert "/base2new/train_base/flowers_v2/shots_16/" in lines["model_dir"]
    assert "DATASET.TAG flowers_v2" in lines["command"]
    # Benchmarks keep their folder names and get no tag.
    assert "DATASET.TAG" not in dry_run(repo, "few_shot", "dtd", 1)["command"]


@pytest.mark.parametrize("tag, message", [
    ("dtd", "TAG='dtd' (own data in"),
    ("base2new", "is also the name of a benchmark dataset or output folder"),
    ("my flowers", "TAG='my flowers' cannot name output folders"),
])
def test_scripts_refuse_a_tag_that_cannot_name_own_data(repo, tag, message):
    result = run_script(repo, "mudpt", "few_shot", "image_folder", 1,
                        DATA=os.path.join(repo, "my_flowers"), TAG=tag)
    assert result.returncode == 2 and message in result.stderr
    assert recorded_calls(repo) == []


def test_two_own_datasets_run_apart_and_appear_in_the_tables(repo, capsys):
    for name, seed in (("my_flowers", 1), ("my_birds", 2)):
        data = os.path.join(repo, name)
        for protocol in ("base2new_train", "base2new_test"):
            result = run_script(repo, "mudpt", protocol, "image_folder", seed, DATA=data)
            assert result.returncode == 0, result.stderr
            assert "results exist" not in result.stdout
    assert len(recorded_calls(repo)) == 4

    assert parse_test_res.main(["--tables", os.path.join(repo, "output"), "--table", "b2n"]) == 0
    out = capsys.readouterr().out
    # The stub's accuracy is 60 + seed, base and new alike: HM = that value.
    assert re.search(r"^\| my_birds \| 62\.00 / 62\.00 / 62\.00\b", out, re.M)
    assert re.search(r"^\| my_flowers \| 61\.00 / 61\.00 / 61\.00\b", out, re.M)
    assert "Not benchmarks of the paper (my_birds, my_flowers): shown, but not in the averages." in out


def test_own_few_shot_runs_get_columns_after_the_benchmarks(repo, capsys):
    for dataset, data in (("dtd", os.path.join(repo, "data")),
                          ("image_folder", os.path.join(repo, "my_flowers"))):
        assert run_script(repo, "mudpt", "few_shot", dataset, 1, DATA=data).returncode == 0
    assert parse_test_res.main(["--tables", os.path.join(repo, "output"), "--table", "1"]) == 0
    out = capsys.readouterr().out
    assert "| Method | DTD | my_flowers | Average |" in out
    # The average covers DTD alone: the own dataset is not part of it.
    assert re.search(r"^\| MuDPT \| 61\.00[^|]* \| 61\.00[^|]* \| 61\.00 \(1/11\)", out, re.M)


# -- bad own data through train.py ----------------------------------------------------------

def train_error(capsys, root, clip_path, out):
    argv = ["--root", str(root), "--trainer", "CoOp", "--output-dir", str(out),
            "--dataset-config-file", "configs/datasets/image_folder.yaml",
            "--config-file", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml",
            "MODEL.BACKBONE.PATH", clip_path, "DATALOADER.NUM_WORKERS", "0"]
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    close_logger()
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    return err


def test_bad_own_data_stops_train_py_with_one_message(tmp_path, tiny_clip_path, capsys):
    root = tmp_path / "mine"
    make_fake_dataset("image_folder", str(root), num_classes=3)
    shutil.rmtree(root / "train" / "dog")
    os.makedirs(root / "train" / "dog")
    err = train_error(capsys, root, tiny_clip_path, tmp_path / "out1")
    assert 'Class "dog" has no images in train/' in err

    split = {"train": [["train/cat/cat_1.jpg", 0, "cat"], ["train/dog/dog_1.jpg", "dog"]],
             "val": [], "test": []}
    (root / "split_ImageFolder.json").write_text(json.dumps(split))
    err = train_error(capsys, root, tiny_clip_path, tmp_path / "out2")
    assert (f'Split file {root / "split_ImageFolder.json"}: entry 1 of the "train" list is '
            '["train/dog/dog_1.jpg", "dog"]') in err
    assert "expected [relative_path, label, classname]" in err
