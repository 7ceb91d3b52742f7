"""Few-shot and ImageNet caches: portable, validated, rebuilt when stale, legacy files still read."""
import functools
import json
import os
import pickle
import random
import shutil

import pytest

import datasets  # noqa: F401  (registers every dataset class)
from dassl.data.datasets.base_dataset import Datum
from datasets.cache import CACHE_FORMAT, OLD_FORMAT_SUFFIX, OLD_PICKLE_FORMAT
from datasets.fake import make_fake_dataset
from train_runs import build_dataset_as_train


build = functools.partial(build_dataset_as_train, shots=2)


def rel(items, root):
    return [(os.path.relpath(i.impath, str(root)), i.label, i.classname) for i in items]


@pytest.fixture
def pets(tmp_path):
    make_fake_dataset("oxford_pets", str(tmp_path / "data"), num_classes=4, images_per_class=12)
    return tmp_path / "data"


def cache_file(root, shots=2, seed=1, suffix=".json"):
    return root / "oxford_pets" / "split_fewshot" / f"shot_{shots}-seed_{seed}{suffix}"


def original_pkl(root, shots=2, seed=1):
    return cache_file(root, shots, seed, suffix=".pkl")


def test_cache_is_json_with_relative_paths_and_a_header(pets):
    dataset = build("OxfordPets", pets)
    content = json.loads(cache_file(pets).read_text())
    header = content["header"]
    assert header["format"] == CACHE_FORMAT
    assert (header["dataset"], header["num_shots"], header["seed"]) == ("OxfordPets", 2, 1)
    assert len(header["split_hash"]) == 16
    assert len(content["train"]) == len(dataset.train_x) == 8
    for relpath, label, domain, classname in content["train"] + content["val"]:
        assert not os.path.isabs(relpath) and relpath.startswith("images")
    # Nothing under the original's file name, and no temp file left behind.
    assert sorted(os.listdir(cache_file(pets).parent)) == ["shot_2-seed_1.json"]


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
    cache_file(pets).write_text('{"header": {"format": ')
    capsys.readouterr()
    rebuilt = build("OxfordPets", pets)
    out = capsys.readouterr().out
    assert "cannot be used: the file cannot be read" in out and "Rebuilding it" in out
    assert "Saving preprocessed few-shot data to" in out
    assert [i.impath for i in rebuilt.train_x] == [i.impath for i in first.train_x]
    assert json.loads(cache_file(pets).read_text())["header"]["seed"] == 1


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
    # The image disappears from the cache's point of view: rewrite one path of a cache
    # whose header matches to a file that does not exist.
    content = json.loads(cache_file(pets).read_text())
    content["train"][0][0] = "images/gone.jpg"
    cache_file(pets).write_text(json.dumps(content))
    capsys.readouterr()
    rebuilt = build("OxfordPets", pets)
    out = capsys.readouterr().out
    assert "train images are missing (e.g." in out and "gone.jpg" in out
    assert [i.impath for i in rebuilt.train_x] == [i.impath for i in dataset.train_x]


# -- sharing the data folder with the original code ---------------------------------------

def original_reads(path):
    """What the original dataset classes do with an existing few-shot cache: unpickle it and
    use the Datum attributes of its "train" and "val" lists."""
    with open(path, "rb") as f:
        data = pickle.load(f)
    train, val = data["train"], data["val"]
    return [(item.impath, item.label) for item in train], [(item.impath, item.label) for item in val]


def original_samples(full_train, full_val, shots, seed):
    """The original's few-shot draw on a fresh folder: global random seeded, train then val
    (min(shots, 4)), one random.sample per label in first-seen order, short labels kept whole."""
    random.seed(seed)
    lists = []
    for source, k in ((full_train, shots), (full_val, min(shots, 4))):
        groups = {}
        for item in source:
            groups.setdefault(item.label, []).append(item)
        lists.append([x for items in groups.values()
                      for x in (random.sample(items, k) if len(items) >= k else items)])
    return lists


def test_folder_used_here_stays_readable_by_the_original(pets, capsys):
    full = build("OxfordPets", pets, shots=-1)
    ours = build("OxfordPets", pets, shots=4, seed=2)
    assert not original_pkl(pets, 4, 2).exists()  # the original finds no file it would misread

    # The original then samples on its own and writes its .pkl: the same images as ours.
    train, val = original_samples(full.train_x, full.val, shots=4, seed=2)
    assert [i.impath for i in train] == [i.impath for i in ours.train_x]
    assert [i.impath for i in val] == [i.impath for i in ours.val]
    original_pkl(pets, 4, 2).write_bytes(
        pickle.dumps({"train": train, "val": val}, protocol=pickle.HIGHEST_PROTOCOL))
    written = original_pkl(pets, 4, 2).read_bytes()

    # Runs here use its file, and leave it byte for byte as it was.
    capsys.readouterr()
    again = build("OxfordPets", pets, shots=4, seed=2)
    out = capsys.readouterr().out
    assert f"Loading preprocessed few-shot data from {original_pkl(pets, 4, 2)}" in out
    assert [i.impath for i in again.train_x] == [i.impath for i in ours.train_x]
    assert original_pkl(pets, 4, 2).read_bytes() == written
    assert original_reads(original_pkl(pets, 4, 2))[0] == [(i.impath, i.label) for i in train]


def legacy_pickle(items_by_split, old_root, new_root):
    """What the original engine wrote: Datum objects with absolute paths of the old root."""
    legacy = {
        split: [Datum.unchecked(i.impath.replace(str(new_root), old_root, 1), i.label, i.domain,
                                i.classname) for i in items]
        for split, items in items_by_split.items()
    }
    return pickle.dumps(legacy, protocol=pickle.HIGHEST_PROTOCOL)


def test_folder_prepared_by_the_original_gives_its_images_here(pets, capsys):
    full = build("OxfordPets", pets, shots=-1)
    train, val = original_samples(full.train_x, full.val, shots=4, seed=3)
    data = legacy_pickle({"train": train, "val": val}, "/old/machine/DATA", pets)
    assert b"dassl.data.datasets.base_dataset" in data and b"/old/machine/DATA" in data
    original_pkl(pets, 4, 3).write_bytes(data)
    capsys.readouterr()
    dataset = build("OxfordPets", pets, shots=4, seed=3)
    out = capsys.readouterr().out
    assert "legacy cache without header" in out and "Rebuilding" not in out
    assert [i.impath for i in dataset.train_x] == [i.impath for i in train]
    assert [i.impath for i in dataset.val] == [i.impath for i in val]
    assert original_pkl(pets, 4, 3).read_bytes() == data
    assert not cache_file(pets, 4, 3).exists()


def test_earlier_own_format_under_the_original_name_is_converted_and_moved_aside(pets, capsys):
    first = build("OxfordPets", pets, shots=2, seed=1)
    content = json.loads(cache_file(pets).read_text())
    # An earlier version of this toolbox pickled a header and tuples under the .pkl name.
    old = {"header": dict(content["header"], format=OLD_PICKLE_FORMAT),
           "train": [tuple(r) for r in content["train"]], "val": [tuple(r) for r in content["val"]]}
    original_pkl(pets).write_bytes(pickle.dumps(old, protocol=pickle.HIGHEST_PROTOCOL))
    os.remove(cache_file(pets))
    with pytest.raises(AttributeError, match="'tuple' object has no attribute 'impath'"):
        original_reads(original_pkl(pets))  # why it must not stay under that name

    capsys.readouterr()
    dataset = build("OxfordPets", pets, shots=2, seed=1)
    out = capsys.readouterr().out
    aside = str(original_pkl(pets)) + OLD_FORMAT_SUFFIX
    assert f"Moved {original_pkl(pets)} to {aside}" in out and "original CoOp/Dassl code" in out
    assert [i.impath for i in dataset.train_x] == [i.impath for i in first.train_x]
    assert not original_pkl(pets).exists() and os.path.isfile(aside)
    assert json.loads(cache_file(pets).read_text())["train"] == content["train"]


def test_earlier_own_format_that_is_stale_is_moved_aside_too(pets, capsys):
    build("OxfordPets", pets, shots=2, seed=1)
    content = json.loads(cache_file(pets).read_text())
    old = {"header": dict(content["header"], format=OLD_PICKLE_FORMAT, seed=2),
           "train": [tuple(r) for r in content["train"]], "val": [tuple(r) for r in content["val"]]}
    original_pkl(pets).write_bytes(pickle.dumps(old))
    capsys.readouterr()
    build("OxfordPets", pets, shots=2, seed=1)
    out = capsys.readouterr().out
    assert "it cannot be used (it was built for seed=2, but this run has seed=1)" in out
    assert not original_pkl(pets).exists()
    assert os.path.isfile(str(original_pkl(pets)) + OLD_FORMAT_SUFFIX)


def test_stale_original_cache_is_left_unchanged(pets, capsys):
    full = build("OxfordPets", pets, shots=-1)
    data = legacy_pickle({"train": full.test[:2], "val": full.val[:1]}, "/old/DATA", pets)
    original_pkl(pets, 4, 3).write_bytes(data)
    capsys.readouterr()
    dataset = build("OxfordPets", pets, shots=4, seed=3)
    out = capsys.readouterr().out
    assert "is not in the current train split" in out and "left unchanged" in out
    assert len(dataset.train_x) == 4 * 4
    assert original_pkl(pets, 4, 3).read_bytes() == data
    assert cache_file(pets, 4, 3).exists()


def test_cache_refuses_to_unpickle_code(pets, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > /dev/null",))

    build("OxfordPets", pets, shots=-1)  # creates split_fewshot/
    evil = pickle.dumps({"train": [Evil()], "val": []})
    original_pkl(pets).write_bytes(evil)
    capsys.readouterr()
    build("OxfordPets", pets)
    out = capsys.readouterr().out
    assert "unexpected object" in out and "left unchanged" in out
    assert original_pkl(pets).read_bytes() == evil


def test_imagenet_preprocessed_cache_is_portable(tmp_path, capsys):
    root = tmp_path / "data"
    make_fake_dataset("imagenet", str(root), num_classes=3, images_per_class=6)
    first = build("ImageNet", root, shots=2)
    content = json.loads((root / "imagenet" / "preprocessed.json").read_text())
    assert content["header"]["dataset"] == "ImageNet"
    assert (len(content["train"]), len(content["test"])) == (18, 9)
    assert not os.path.isabs(content["train"][0][0])
    assert not (root / "imagenet" / "preprocessed.pkl").exists()

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


def test_imagenet_original_preprocessed_pickle_is_read_and_left_unchanged(tmp_path):
    root = tmp_path / "data"
    make_fake_dataset("imagenet", str(root), num_classes=3, images_per_class=6)
    full = build("ImageNet", root, shots=-1)
    os.remove(root / "imagenet" / "preprocessed.json")
    cache = root / "imagenet" / "preprocessed.pkl"
    data = legacy_pickle({"train": full.train_x[:5], "test": full.test[:4]}, "/mnt/old", root)
    cache.write_bytes(data)
    dataset = build("ImageNet", root, shots=-1)
    assert [i.impath for i in dataset.train_x] == [i.impath for i in full.train_x[:5]]
    assert dataset.val is dataset.test and len(dataset.test) == 4
    assert cache.read_bytes() == data
    assert not (root / "imagenet" / "preprocessed.json").exists()


def test_imagenet_earlier_own_format_is_moved_aside(tmp_path, capsys):
    root = tmp_path / "data"
    make_fake_dataset("imagenet", str(root), num_classes=3, images_per_class=6)
    full = build("ImageNet", root, shots=-1)
    ours = root / "imagenet" / "preprocessed.json"
    content = json.loads(ours.read_text())
    old = {"header": dict(content["header"], format=OLD_PICKLE_FORMAT),
           "train": [tuple(r) for r in content["train"]], "test": [tuple(r) for r in content["test"]]}
    (root / "imagenet" / "preprocessed.pkl").write_bytes(pickle.dumps(old))
    os.remove(ours)
    capsys.readouterr()
    dataset = build("ImageNet", root, shots=-1)
    assert "Moved " in capsys.readouterr().out
    assert rel(dataset.test, root) == rel(full.test, root)
    assert not (root / "imagenet" / "preprocessed.pkl").exists()
    assert (root / "imagenet" / f"preprocessed.pkl{OLD_FORMAT_SUFFIX}").exists()
    assert json.loads(ours.read_text())["train"] == content["train"]
