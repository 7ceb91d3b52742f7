"""Own data and shared data folders without silent surprises: a run is tied to the folder it read
and the files in it, an own dataset's split follows its folder, a read-only data folder keeps its
caches per user, the dataset checker opens every image, and CLIP-LoRA prompts as released."""
import errno
import json
import os
import shutil

import pytest
import torch

import datasets  # noqa: F401  (registers every dataset class)
import trainers
from datasets.fake import make_fake_dataset
from datasets.verify import MISSING, WARN, check_dataset
from test_scripts import make_fake_repo, recorded_calls, run_script
from tool_modules import load_tool
from train_runs import build_dataset_as_train as build
from train_runs import error_of, exit_code, restore_streams, train_argv  # noqa: F401  (fixture)
from trainers.clip_prompting import tiny_clip, tokenize
from trainers.cliplora import CLIPLoRACLIP

SPLIT = "split_ImageFolder.json"


def paths(items, root):
    return sorted(os.path.relpath(item.impath, str(root)) for item in items)


def every_path(dataset, root):
    return paths(dataset.train_x + dataset.val + dataset.test, root)


@pytest.fixture
def own(tmp_path):
    """An own dataset: classes cat, dog, horse, 5 images each (train 2 or 3, val 1, test 2)."""
    root = tmp_path / "flowers"
    make_fake_dataset("image_folder", str(root), num_classes=3, images_per_class=5)
    return root


def add_image(root, relpath, like="train/cat/cat_1.jpg"):
    os.makedirs(os.path.dirname(root / relpath), exist_ok=True)
    shutil.copy(root / like, root / relpath)


# ------------------------------------------------------------------ B3: the split follows the folder
def test_images_and_classes_added_after_the_first_run_rebuild_the_split(own, capsys):
    first = build("ImageFolder", own)
    assert len(first.train_x) == 6
    add_image(own, "train/cat/cat_new.jpg")
    capsys.readouterr()
    second = build("ImageFolder", own)
    out = capsys.readouterr().out
    assert (f"Note: the images in {own} changed since {own / SPLIT} was written (1 image(s) added "
            f"(train/cat/cat_new.jpg); 0 removed). Rebuilding the split from the folders; the previous "
            f"one is kept as {own / SPLIT}.previous.") in out
    assert "train/cat/cat_new.jpg" in every_path(second, own)
    assert json.loads((own / f"{SPLIT}.previous").read_text()) != json.loads((own / SPLIT).read_text())
    assert len(second.data_hash) == 16 and second.data_hash != first.data_hash  # part of a run's identity

    for part in ("train", "val", "test"):  # a new class, in every split
        add_image(own, f"{part}/zebra/zebra_1.jpg")
    third = build("ImageFolder", own)
    assert "3 image(s) added" in capsys.readouterr().out
    assert third.classnames == ["cat", "dog", "horse", "zebra"]
    capsys.readouterr()
    build("ImageFolder", own)  # unchanged now: read as recorded, no note
    out = capsys.readouterr().out
    assert "Reading split from" in out and "changed since" not in out


def test_a_removed_bad_image_rebuilds_the_split_instead_of_stopping(own, capsys):
    build("ImageFolder", own)
    os.remove(own / "train" / "dog" / "dog_1.jpg")  # as the bad-image message advises
    capsys.readouterr()
    dataset = build("ImageFolder", own)
    assert "0 image(s) added; 1 removed (train/dog/dog_1.jpg)" in capsys.readouterr().out
    assert "train/dog/dog_1.jpg" not in every_path(dataset, own)


# ------------------------------------------------------------------ C10: what a class folder holds
def test_subfolders_are_part_of_their_class_and_other_files_are_left_out_with_a_count(own, capsys):
    assert not (own / SPLIT).exists()  # the split is built on first use
    add_image(own, "train/cat/more/cat_deep.jpg")
    (own / "train" / "cat" / "notes.txt").write_text("collected on Sunday")
    (own / "test" / "dog" / "labels.csv").write_text("a,b")
    dataset = build("ImageFolder", own)
    out = capsys.readouterr().out
    assert (f"Note: 2 file(s) in the class folders of {own} are not images (by their extension) and are "
            "left out: test/dog/labels.csv, train/cat/notes.txt") in out
    everything = every_path(dataset, own)
    assert "train/cat/more/cat_deep.jpg" in everything
    assert not [path for path in everything if path.endswith((".txt", ".csv"))]
    deep = [item for item in dataset.train_x + dataset.val if item.impath.endswith("cat_deep.jpg")]
    assert [item.classname for item in deep] == ["cat"]


def test_the_checker_opens_every_own_image_and_calls_a_broken_one_unusable(own, capsys):
    build("ImageFolder", own)  # used once: its split is recorded
    assert check_dataset("image_folder", str(own)).usable
    (own / "train" / "horse" / "horse_9.jpg").write_bytes(b"not a picture")
    (own / "train" / "horse" / "notes.txt").write_text("stray")
    rows = {check: (status, detail) for check, status, detail in check_dataset("image_folder", str(own)).rows}
    status, detail = rows["images opened"]
    assert status == MISSING
    assert detail.startswith("1 of 16 cannot be read: train/horse/horse_9.jpg (UnidentifiedImageError)")
    assert rows["other files"] == (WARN, "1 file(s) that are not images by their extension are left out: "
                                         "train/horse/notes.txt")
    assert rows["split file"][0] == WARN and "rebuilds it from the folders" in rows["split file"][1]
    assert load_tool("check_datasets").main(["--root", str(own), "--dataset", "image_folder"]) == 1
    assert "Not usable: image_folder" in capsys.readouterr().err


# ------------------------------------------------------------------ C9: a read-only data folder
@pytest.fixture
def read_only(monkeypatch, tmp_path):
    """Make every write below a folder fail as on a read-only share (tests may run as root)."""
    cache = tmp_path / "user_cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    real_open, real_makedirs, real_replace = os.open, os.makedirs, os.replace
    folders = []

    def inside(path):
        path = os.path.abspath(os.fspath(path))
        return any(path == f or path.startswith(f + os.sep) for f in folders)

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    def guarded_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_makedirs(path, *args, **kwargs):
        if inside(path) and not os.path.isdir(path):
            refuse(path)
        return real_makedirs(path, *args, **kwargs)

    def guarded_replace(source, target, *args, **kwargs):
        if inside(source) or inside(target):
            refuse(target)
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "makedirs", guarded_makedirs)
    monkeypatch.setattr(os, "replace", guarded_replace)
    return lambda folder: folders.append(os.path.abspath(str(folder))) or cache


def test_a_read_only_data_folder_keeps_its_few_shot_cache_per_user(tmp_path, read_only, capsys):
    root = tmp_path / "shared"
    make_fake_dataset("oxford_pets", str(root), num_classes=3, images_per_class=8)
    cache = read_only(root)
    first = build("OxfordPets", root, shots=2)
    out = capsys.readouterr().out
    note = [line for line in out.splitlines() if line.startswith("Note: the dataset folder")]
    assert len(note) == 1 and f"{root / 'oxford_pets'} cannot be written (Permission denied)" in note[0]
    saved = [os.path.join(folder, name) for folder, _, names in os.walk(cache) for name in names]
    assert [os.path.basename(path) for path in saved] == ["shot_2-seed_1.json"]
    assert not (root / "oxford_pets" / "split_fewshot").exists()
    second = build("OxfordPets", root, shots=2)
    assert f"Loading preprocessed few-shot data from {saved[0]}" in capsys.readouterr().out
    assert paths(second.train_x, root) == paths(first.train_x, root)


def test_a_read_only_own_folder_keeps_its_rebuilt_split_per_user(own, read_only, capsys):
    build("ImageFolder", own)
    os.remove(own / "test" / "cat" / "cat_5.jpg")
    cache = read_only(own)
    dataset = build("ImageFolder", own)
    out = capsys.readouterr().out
    assert f"Rebuilding the split from the folders; {own / SPLIT} is left unchanged." in out
    assert "test/cat/cat_5.jpg" not in every_path(dataset, own)
    build("ImageFolder", own)  # the per-user split is current: read, not rebuilt again
    out = capsys.readouterr().out
    assert "changed since" not in out and f"Reading split from {cache}" in out


# ------------------------------------------------------------------ B2: one folder name, two datasets
@pytest.fixture
def two_flowers(tmp_path):
    """A/flowers and B/flowers: same folder name, same file names, other images."""
    for name, seed in (("A", 0), ("B", 1)):
        make_fake_dataset("image_folder", str(tmp_path / name / "flowers"), num_classes=3,
                          images_per_class=5, seed=seed)
    return tmp_path / "A" / "flowers", tmp_path / "B" / "flowers"


def test_scripts_do_not_skip_another_folder_of_the_same_name_as_done(tmp_path, two_flowers):
    a, b = two_flowers
    repo = make_fake_repo(tmp_path)
    with open(os.path.join(repo, "configs", "datasets", "image_folder.yaml"), "w") as f:
        f.write('DATASET:\n  NAME: "ImageFolder"\n')
    assert run_script(repo, "mudpt", "base2new_train", "image_folder", 1, DATA=a).returncode == 0
    folder = os.path.join(repo, "output", "base2new", "train_base", "flowers", "shots_16", "MuDPT",
                          "vit_b16_bz4_ep10_nctx4_depth12", "seed1")
    results = os.path.join(folder, "results.json")
    with open(results) as f:  # what train.py records (the stub writes no identity)
        payload = json.load(f)
    payload["identity"] = {"trainer": "MuDPT", "dataset": "ImageFolder", "tag": "flowers", "seed": 1,
                           "num_shots": 16, "subsample": "base", "config": "vit_b16_bz4_ep10_nctx4_depth12",
                           "data_root": str(a), "data_hash": "0123456789abcdef"}
    with open(results, "w") as f:
        json.dump(payload, f)

    again = run_script(repo, "mudpt", "base2new_train", "image_folder", 1, DATA=f"{a}/../flowers/")
    assert again.returncode == 0 and "results exist" in again.stdout  # the same folder: done
    other = run_script(repo, "mudpt", "base2new_train", "image_folder", 1, DATA=b)
    assert other.returncode == 2
    assert f"data_root: '{a}' there, '{b}' here" in other.stderr
    assert "set TAG=NAME for this one" in other.stderr
    assert len(recorded_calls(repo)) == 1


def test_train_py_neither_reuses_nor_tests_a_run_of_another_folder_of_the_same_name(
        tmp_path, two_flowers, tiny_clip_path, capsys):
    a, b = two_flowers
    out = tmp_path / "out"

    def zero_shot(data, output, flags=()):
        return train_argv(data, tiny_clip_path, output, "ZeroshotCLIP", "vit_b16", dataset="image_folder",
                          flags=("--eval-only", *flags))

    assert exit_code(zero_shot(a, out)) == 0
    files = {name: (out / name).read_text() for name in ("results.json", "config.yaml")}
    err = error_of(capsys, zero_shot(b, out))
    assert f"data_root: '{a}' there, '{b}' here" in err and "set DATASET.TAG" in err
    assert {name: (out / name).read_text() for name in files} == files  # refused before writing
    assert len(json.loads(files["results.json"])["identity"]["data_hash"]) == 16

    # a model of A's folder evaluated on B's (same name): refused, nothing recorded as B's
    err = error_of(capsys, zero_shot(b, tmp_path / "test_b", flags=("--model-dir", str(out))))
    assert f'The model in "{out}" was trained on other data named "flowers"' in err
    assert not (tmp_path / "test_b" / "results.json").exists()


# ------------------------------------------------------------------ C7: CFG names the config
def test_an_unknown_cfg_is_named_with_the_configs_of_the_method(tmp_path):
    repo = make_fake_repo(tmp_path)
    result = run_script(repo, "coop", "base2new_train", "dtd", 1, CFG="nope")
    assert result.returncode == 2
    assert ("CFG=nope names no config of CoOp: configs/trainers/CoOp/nope.yaml does not exist. Configs of "
            "CoOp: vit_b16 vit_b16_ctxv1 vit_b16_ep100 vit_b16_ep50 vit_b16_ep50_ctxv1. Set CFG to one of "
            "them, or unset CFG") in result.stderr
    assert "method.sh" not in result.stderr and recorded_calls(repo) == []


# ------------------------------------------------------------------ D: CLIP-LoRA's prompt
@pytest.mark.parametrize("dataset, template, prompt", [
    ("DescribableTextures", "released", "a photo of a banded."),  # the released code, every dataset
    ("EuroSAT", "released", "a photo of a banded."),
    ("DescribableTextures", "dataset", "banded texture."),  # CoOp's per-dataset template
    ("EuroSAT", "dataset", "a centered satellite photo of banded."),
    ("DescribableTextures", "an image of {}, a pattern.", "an image of banded, a pattern."),
])
def test_cliplora_prompts_as_released_unless_asked(dataset, template, prompt):
    cfg = trainers.build_cfg("CLIPLORA", TEMPLATE=template)
    cfg.DATASET.NAME = dataset
    torch.manual_seed(0)
    model = CLIPLoRACLIP(cfg, ["banded", "striped"], tiny_clip(image_resolution=32, layers=2, patch_size=16))
    assert torch.equal(model.tokenized_prompts[0], tokenize([prompt])[0])
    assert trainers.build_cfg().TRAINER.CLIPLORA.TEMPLATE == "released"


def test_cliplora_refuses_a_template_without_a_class_slot():
    cfg = trainers.build_cfg("CLIPLORA", TEMPLATE="a photo")
    with pytest.raises(ValueError, match=r'TRAINER.CLIPLORA: TEMPLATE is "a photo"; use "released"'):
        CLIPLoRACLIP(cfg, ["banded"], tiny_clip(image_resolution=32, layers=2, patch_size=16))
