"""tools/make_fake_dataset.py and tools/check_datasets.py."""
import os
import shutil
import time

import pytest

import datasets  # noqa: F401  (registers every dataset class)
from datasets.fake import FAKE_DATASET_NAMES, make_fake_dataset
from datasets.verify import MISSING, OK, WARN, check_dataset
from tool_modules import load_tool


def rows(report):
    return {check: (status, detail) for check, status, detail in report.rows}


def test_fake_caltech101_is_fast(tmp_path):
    start = time.perf_counter()
    fake = make_fake_dataset("caltech101", str(tmp_path), num_classes=10, images_per_class=8)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    images = sum(len(files) for _, _, files in os.walk(os.path.join(fake.dataset_dir, "101_ObjectCategories")))
    assert images == (10 + 2) * 8  # the two ignored folders are there too, as in the real archive
    assert fake.counts == {"train": 40, "val": 20, "test": 20}


def test_fake_dataset_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="at least 4"):
        make_fake_dataset("dtd", str(tmp_path), images_per_class=3)
    with pytest.raises(ValueError, match="Unknown dataset"):
        make_fake_dataset("mnist", str(tmp_path))
    with pytest.raises(ValueError, match="EuroSAT has 10 classes"):
        make_fake_dataset("eurosat", str(tmp_path), num_classes=11)


def test_make_fake_dataset_cli(tmp_path, capsys):
    tool = load_tool("make_fake_dataset")
    assert tool.main(["--dataset", "ucf101", "--root", str(tmp_path), "--classes", "3",
                      "--images-per-class", "5"]) == 0
    assert "ucf101: 3 classes (train 6, val 3, test 6)" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "ucf101" / "split_zhou_UCF101.json")
    assert os.path.isfile(tmp_path / "ucf101" / "ucfTrainTestlist" / "classInd.txt")


def test_check_reports_a_healthy_fake_layout(tmp_path):
    for name in FAKE_DATASET_NAMES:
        if name != "image_folder":
            make_fake_dataset(name, str(tmp_path), num_classes=3, images_per_class=4)
    tool = load_tool("check_datasets")
    assert tool.main(["--root", str(tmp_path), "--dataset", "oxford_pets", "ImageNet",
                      "fgvc_aircraft", "imagenet_r"]) == 0
    pets = rows(check_dataset("oxford_pets", str(tmp_path)))
    assert pets["train images"] == (WARN, "6 of 6 images found (published: 2,944)")
    assert pets["classes"] == (WARN, "3 (published: 37)")
    imagenet_r = rows(check_dataset("imagenet_r", str(tmp_path)))
    assert imagenet_r["test images"][1].startswith("12 images in 3 class folders")


def test_check_reports_a_broken_layout_precisely(tmp_path, capsys):
    root = str(tmp_path)
    make_fake_dataset("eurosat", root, num_classes=3, images_per_class=4)  # stays healthy
    dtd = make_fake_dataset("dtd", root, num_classes=3, images_per_class=8)
    shutil.rmtree(os.path.join(dtd.dataset_dir, "images", "banded"))
    pets = make_fake_dataset("oxford_pets", root, num_classes=3, images_per_class=4, with_split=False)
    os.remove(os.path.join(pets.dataset_dir, "annotations", "test.txt"))
    imagenet = make_fake_dataset("imagenet", root, num_classes=3, images_per_class=4)
    val_dir = os.path.join(imagenet.dataset_dir, "images", "val")
    for wnid in os.listdir(val_dir):  # the classic mistake: val images left flat
        for name in os.listdir(os.path.join(val_dir, wnid)):
            os.rename(os.path.join(val_dir, wnid, name), os.path.join(val_dir, name))
        os.rmdir(os.path.join(val_dir, wnid))

    report = rows(check_dataset("dtd", root))
    status, detail = report["train images"]
    assert status == MISSING
    assert detail.startswith("8 of 12 images found; missing: ")
    assert os.path.join(dtd.dataset_dir, "images", "banded", "banded_0001.jpg") in detail
    assert detail.endswith("and 1 more (published: 2,820)")
    assert report["val images"][0] == MISSING and report["split file"][0] == OK

    report = rows(check_dataset("oxford_pets", root))
    assert report["split file"][0] == MISSING
    assert os.path.join(pets.dataset_dir, "annotations", "test.txt") in report["split file"][1]
    assert "trainval.txt" not in report["split file"][1]

    report = rows(check_dataset("imagenet", root))
    assert report["train images"][0] == WARN
    assert report["test images"] == (MISSING, f"{val_dir} has no class folders (the ImageNet val "
                                     "images must be moved into <wnid>/ class folders)")

    absent = check_dataset("SUN397", root)
    assert rows(absent)["dataset folder"] == (MISSING, os.path.join(root, "sun397"))
    assert any("Partitions.zip" in line for line in absent.downloads)

    tool = load_tool("check_datasets")
    capsys.readouterr()
    assert tool.main(["--root", root, "--dataset", "dtd", "oxford_pets", "imagenet", "eurosat"]) == 1
    captured = capsys.readouterr()
    assert "Not usable: dtd, oxford_pets, imagenet" in captured.err
    assert "eurosat" not in captured.err
    assert "dtd-r1.0.1.tar.gz" in captured.out  # where to get what is missing


def test_check_warns_when_a_split_will_be_created(tmp_path):
    fake = make_fake_dataset("caltech101", str(tmp_path), num_classes=3, with_split=False)
    report = check_dataset("caltech101", str(tmp_path))
    assert report.usable
    status, detail = rows(report)["split file"]
    assert status == WARN and "will be CREATED" in detail
    assert os.path.join(fake.dataset_dir, "split_zhou_Caltech101.json") in detail
    assert report.downloads == [
        "  split_zhou_Caltech101.json: "
        "https://drive.google.com/file/d/1hyarUivQE36mY6jSomru6Fjd-JzwcCzN/view"
    ]


def test_check_rejects_unknown_dataset_name(tmp_path):
    tool = load_tool("check_datasets")
    with pytest.raises(SystemExit) as info:
        tool.main(["--root", str(tmp_path), "--dataset", "mnist"])
    assert info.value.code == 2
