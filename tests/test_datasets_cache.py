"""Few-shot and ImageNet caches: portable, validated, rebuilt when stale, legacy files still read."""
import json
import os
import pickle
import random
import shutil

import pytest

import datasets  # noqa: F401  (registers every dataset class)
from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset
from dassl.data.datasets.base_dataset import Datum
from datasets.cache import CACHE_FORMAT
from datasets.fake import make_fake_dataset


def build(name, root, shots=2, seed=1, subsample="all"):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    random.seed(seed)
    return build_dataset(cfg)


def rel(items, root):
    return [(os.path.relpath(i.impath, str(root)), i.label, i.classname) for i in items]


@pytest.fixture
def pets(tmp_path):
    make_fake_dataset("oxford_pets", str(tmp_path / "data"), num_classes=4, images_per_class=12)
    return tmp_path / "data"


def cache_file(root, shots=2, seed=1):
    return root / "oxford_pets" / "split_fewshot" / f"shot_{shots}-seed_{seed}.pkl"


def test_cache_stores_relative_paths_and_a_header(pets):
    dataset = build("OxfordPets", pets)
    with open(cache_file(pets), "rb") as f:
        content = pickle.load(f)
    header = content["header"]
    assert header["format"] == CACHE_FORMAT
    assert (header["dataset"], header["num_shots"], header["seed"]) == ("OxfordPets", 2, 1)
    assert len(header["split_hash"]) == 16
    assert len(content["train"]) == len(dataset.train_x) == 8
    for relpath, label, domain, classname in content["train"] + content["val"]:
        assert not os.path.isabs(relpath) and relpath.startswith("images")
    assert not [f for f in os.listdir(cache_file(pets).parent) if f.startswith(".tmp")]


def test_moved_data_folder_still_works(pets, tmp_path, capsys):
    before = build("OxfordPets", pets)
    moved = tmp_path / "elsewhere" / "data"
    shutil.move(str(pets), str(moved))
    capsys.readouterr()
    after = build("OxfordPets", moved, seed=1)
    out = capsys.readouterr().out
    assert "Loading preprocessed few-shot data from" in out and "Rebuilding" not in out
    assert rel(after.train_x, moved) == rel(before.train_x, pets)
    assert rel(after.val, moved) == rel(before.val, pets)
    assert all(os.path.isfile(i.impath) for i in after.train_x + after.val)


def test_corrupt_cache_is_rebuilt_with_a_reason(pets, capsys):
    first = build("OxfordPets", pets)
    cache_file(pets).write_bytes(b"\x80\x04 not a pickle")
    capsys.readouterr()
    rebuilt = build("OxfordPets", pets)
    out = capsys.readouterr().out
    assert "cannot be used: the file cannot be read" in out and "Rebuilding it" in out
    assert "Saving preprocessed few-shot data to" in out
    assert [i.impath for i in rebuilt.train_x] == [i.impath for i in first.train_x]
    with open(cache_file(pets), "rb") as f:
        assert pickle.load(f)["header"]["seed"] == 1


def test_cache_of_another_split_is_rebuilt(pets, capsys):
    build("OxfordPets", pets)
    split_path = pets / "oxford_pets" / "split_zhou_OxfordPets.json"
    split = json.loads(split_path.read_text())
    split["train"] = split["train"][1:]  # the split file changed after the cache was written
    split_path.write_text(json.dumps(split))
    capsys.readouterr()
    build("OxfordPets", pets)
    out = capsys.readouterr().out
    assert "it was built for split_hash=" in out and "Rebuilding it" in out


def test_cache_written_for_another_seed_is_rejected(pets, capsys):
    build("OxfordPets", pets, seed=1)
    shutil.copy(cache_file(pets, seed=1), cache_file(pets, seed=2))
    capsys.readouterr()
    build("OxfordPets", pets, seed=2)
    assert "it was built for seed=1, but this run has seed=2" in capsys.readouterr().out


def test_cache_with_missing_image_is_rebuilt(pets, capsys):
    dataset = build("OxfordPets", pets)
    # The image disappears from the cache's point of view: copy a cache whose
    # header matches, but rewrite one path to a file that does not exist.
    with open(cache_file(pets), "rb") as f:
        content = pickle.load(f)
    relpath, label, domain, classname = content["train"][0]
    content["train"][0] = ("images/gone.jpg", label, domain, classname)
    cache_file(pets).write_bytes(pickle.dumps(content))
    capsys.readouterr()
    rebuilt = build("OxfordPets", pets)
    out = capsys.readouterr().out
    assert "train images are missing (e.g." in out and "gone.jpg" in out
    assert [i.impath for i in rebuilt.train_x] == [i.impath for i in dataset.train_x]


def legacy_pickle(items_by_split, old_root, new_root):
    """What the original engine wrote: Datum objects with absolute paths of the old root."""
    legacy = {
        split: [Datum.unchecked(i.impath.replace(str(new_root), old_root, 1), i.label, i.domain,
                                i.classname) for i in items]
        for split, items in items_by_split.items()
    }
    return pickle.dumps(legacy, protocol=pickle.HIGHEST_PROTOCOL)


def test_legacy_absolute_path_cache_is_read_and_rerooted(pets, capsys):
    full = build("OxfordPets", pets, shots=-1)
    chosen_train = [full.train_x[i] for i in (0, 3, 9, 12, 20, 23)]
    chosen_val = full.val[:2]
    data = legacy_pickle({"train": chosen_train, "val": chosen_val}, "/old/machine/DATA", pets)
    assert b"dassl.data.datasets.base_dataset" in data and b"/old/machine/DATA" in data
    cache_file(pets, shots=4, seed=3).write_bytes(data)
    capsys.readouterr()
    dataset = build("OxfordPets", pets, shots=4, seed=3)
    out = capsys.readouterr().out
    assert "legacy cache without header" in out and "Rebuilding" not in out
    assert [i.impath for i in dataset.train_x] == [i.impath for i in chosen_train]
    assert [i.impath for i in dataset.val] == [i.impath for i in chosen_val]


def test_legacy_cache_from_another_split_is_rebuilt(pets, capsys):
    full = build("OxfordPets", pets, shots=-1)
    data = legacy_pickle({"train": full.test[:2], "val": full.val[:1]}, "/old/DATA", pets)
    cache_file(pets, shots=4, seed=3).write_bytes(data)
    capsys.readouterr()
    dataset = build("OxfordPets", pets, shots=4, seed=3)
    out = capsys.readouterr().out
    assert "is not in the current train split" in out and "Rebuilding it" in out
    assert len(dataset.train_x) == 4 * 4


def test_cache_refuses_to_unpickle_code(pets, capsys):
    build("OxfordPets", pets)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > /dev/null",))

    cache_file(pets).write_bytes(pickle.dumps({"train": [Evil()], "val": []}))
    capsys.readouterr()
    build("OxfordPets", pets)
    assert "unexpected object" in capsys.readouterr().out


def test_imagenet_preprocessed_cache_is_portable(tmp_path, capsys):
    root = tmp_path / "data"
    make_fake_dataset("imagenet", str(root), num_classes=3, images_per_class=6)
    first = build("ImageNet", root, shots=2)
    cache = root / "imagenet" / "preprocessed.pkl"
    with open(cache, "rb") as f:
        content = pickle.load(f)
    assert content["header"]["dataset"] == "ImageNet"
    assert (len(content["train"]), len(content["test"])) == (18, 9)
    assert not os.path.isabs(content["train"][0][0])

    moved = tmp_path / "moved"
    shutil.move(str(root), str(moved))
    capsys.readouterr()
    second = build("ImageNet", moved, shots=2)
    out = capsys.readouterr().out
    assert "cannot be used" not in out and "Loading preprocessed few-shot data" in out
    assert rel(second.train_x, moved) == rel(first.train_x, root)
    assert rel(second.test, moved) == rel(first.test, root)
    # The folders are not listed again: a new image appears only after a rebuild.
    extra = moved / "imagenet" / "images" / "val" / os.listdir(moved / "imagenet" / "images" / "val")[0]
    shutil.copy(second.test[0].impath, extra / "late.JPEG")
    assert len(build("ImageNet", moved, shots=-1).test) == 9


def test_imagenet_legacy_preprocessed_pickle_is_rerooted(tmp_path):
    root = tmp_path / "data"
    make_fake_dataset("imagenet", str(root), num_classes=3, images_per_class=6)
    full = build("ImageNet", root, shots=-1)
    cache = root / "imagenet" / "preprocessed.pkl"
    cache.write_bytes(legacy_pickle({"train": full.train_x[:5], "test": full.test[:4]},
                                    "/mnt/old", root))
    dataset = build("ImageNet", root, shots=-1)
    assert [i.impath for i in dataset.train_x] == [i.impath for i in full.train_x[:5]]
    assert dataset.val is dataset.test and len(dataset.test) == 4
