"""Every dataset class, built from fake data in its exact on-disk layout."""
import json
import math
import os
import random
import shutil

import pytest
import yaml

import datasets  # noqa: F401  (registers every dataset class)
from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY, Datum, build_dataset
from datasets.benchmark import DatasetNotFoundError
from datasets.eurosat import CLASSNAMES_BY_FOLDER
from datasets.fake import FAKE_DATASET_NAMES, make_fake_dataset
from datasets.templates import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE, USES_DEFAULT_TEMPLATE, dataset_template
from train_runs import build_dataset_as_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 5  # odd, so the base half (3) and the new half (2) differ in size
IMAGES_PER_CLASS = 8  # fake split per class: 4 train, 2 val, 2 test
SPLIT_DATASETS = ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                  "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101", "image_folder"]
VARIANTS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
SUBSAMPLING_DATASETS = SPLIT_DATASETS + ["imagenet"]


def registry_name(config_stem):
    with open(os.path.join(REPO, "configs", "datasets", f"{config_stem}.yaml")) as f:
        return yaml.safe_load(f)["DATASET"]["NAME"]


def make(name, root, **kwargs):
    kwargs.setdefault("num_classes", NUM_CLASSES)
    kwargs.setdefault("images_per_class", IMAGES_PER_CLASS)
    return make_fake_dataset(name, root, **kwargs)


def data_root(name, tmp_path):
    # ImageFolder data is the root itself; the others live in a sub-folder of it.
    return str(tmp_path / "mine") if name == "image_folder" else str(tmp_path)


def build(name, root, **options):
    """The dataset of folder ``name`` (its registry name looked up), as train.py builds it."""
    return build_dataset_as_train(registry_name(name), root, **options)


def per_label(items):
    counts = {}
    for item in items:
        counts[item.label] = counts.get(item.label, 0) + 1
    return counts


def relpaths(items, root):
    return [(os.path.relpath(item.impath, root), item.label, item.classname) for item in items]


def test_every_config_names_a_registered_dataset():
    stems = sorted(f[:-5] for f in os.listdir(os.path.join(REPO, "configs", "datasets")))
    assert stems == sorted(FAKE_DATASET_NAMES)
    names = DATASET_REGISTRY.registered_names()
    for stem in stems:
        assert registry_name(stem) in names
    assert len({registry_name(s) for s in stems}) == 17


def test_every_registered_dataset_has_a_template_or_uses_the_default_on_purpose():
    ours = {name for name in DATASET_REGISTRY.registered_names()
            if DATASET_REGISTRY.get(name).__module__.startswith("datasets.")}  # not the tests' toy datasets
    assert len(ours) == 17
    undecided = sorted(ours - set(CUSTOM_TEMPLATES) - set(USES_DEFAULT_TEMPLATE))
    assert not undecided, f"give {undecided} a template in datasets/templates.py, or list them in USES_DEFAULT_TEMPLATE"
    assert set(CUSTOM_TEMPLATES) | set(USES_DEFAULT_TEMPLATE) == ours  # no entry names a dataset that is not there
    assert not set(CUSTOM_TEMPLATES) & set(USES_DEFAULT_TEMPLATE)
    assert all(template.count("{}") == 1 for template in CUSTOM_TEMPLATES.values())
    assert dataset_template("EuroSAT") == "a centered satellite photo of {}."
    assert dataset_template("DescribableTextures") == "{} texture."  # CoOp's; KgCoOp keeps its own DTD prompt
    assert dataset_template("SyntheticShapes") == dataset_template("MyOwnData") == DEFAULT_TEMPLATE
    assert DEFAULT_TEMPLATE == "a photo of a {}."


def test_coop_template_names_still_import_from_zsclip():
    """CoOp's zsclip.py defines CUSTOM_TEMPLATES, and code written for CoOp imports it from there."""
    from trainers.zsclip import CUSTOM_TEMPLATES as from_zsclip
    from trainers.zsclip import DEFAULT_TEMPLATE as default_from_zsclip
    from trainers.zsclip import ENSEMBLE_TEMPLATES
    assert from_zsclip is CUSTOM_TEMPLATES and default_from_zsclip == DEFAULT_TEMPLATE
    assert len(ENSEMBLE_TEMPLATES) == 7 and "itap of a {}." in ENSEMBLE_TEMPLATES


@pytest.mark.parametrize("name", SPLIT_DATASETS + ["imagenet"])
def test_full_dataset_sizes_and_classnames(name, tmp_path):
    root = data_root(name, tmp_path)
    fake = make(name, root)
    dataset = build(name, root)
    assert dataset.num_classes == NUM_CLASSES
    assert dataset.classnames == fake.classnames
    assert len(dataset.train_x) == fake.counts["train"]
    assert len(dataset.test) == fake.counts["test"]
    if name == "imagenet":
        assert dataset.val is dataset.test  # ImageNet's val set is its test set
    else:
        assert len(dataset.val) == fake.counts["val"]
    assert os.path.isdir(os.path.join(fake.dataset_dir, "split_fewshot"))  # even without shots
    for item in dataset.train_x + dataset.test:
        assert os.path.isfile(item.impath)
        assert dataset.classnames[item.label] == item.classname


@pytest.mark.parametrize("name", VARIANTS)
def test_imagenet_variants_use_one_list_for_train_and_test(name, tmp_path):
    fake = make(name, str(tmp_path))
    dataset = build(name, str(tmp_path), shots=16, subsample="base")  # neither applies
    assert dataset.classnames == fake.classnames
    assert dataset.train_x is dataset.test
    assert len(dataset.test) == fake.counts["test"]
    assert not dataset.val
    assert sorted(per_label(dataset.test)) == list(range(NUM_CLASSES))
    assert not os.path.exists(os.path.join(fake.dataset_dir, "split_fewshot"))


def test_imagenet_a_names_come_from_the_full_classnames_file(tmp_path):
    make("imagenet_a", str(tmp_path), num_classes=3)
    with open(tmp_path / "imagenet-adversarial" / "classnames.txt") as f:
        lines = [line.split(" ", 1)[1].strip() for line in f]
    dataset = build("imagenet_a", str(tmp_path))
    assert len(lines) == 6  # 3 folders out of a 6-class file: every other class
    assert dataset.classnames == ["tench", "great white shark", "hammerhead shark"] == lines[::2]


def test_imagenetv2_label_is_the_folder_number(tmp_path):
    make("imagenetv2", str(tmp_path), num_classes=3)
    dataset = build("imagenetv2", str(tmp_path))
    for item in dataset.test:
        assert os.path.basename(os.path.dirname(item.impath)) == str(item.label)
    assert dataset.classnames == ["tench", "goldfish", "great white shark"]


def test_eurosat_classnames_are_the_descriptive_renames(tmp_path):
    make("eurosat", str(tmp_path), num_classes=10)
    base = build("eurosat", str(tmp_path), subsample="base")
    new = build("eurosat", str(tmp_path), subsample="new")
    assert base.classnames == ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land",
                               "Highway or Road", "Industrial Buildings"]
    assert new.classnames == ["Pasture Land", "Permanent Crop Land", "Residential Buildings",
                              "River", "Sea or Lake"]
    assert base.classnames + new.classnames == [CLASSNAMES_BY_FOLDER[f] for f in sorted(CLASSNAMES_BY_FOLDER)]


def test_caltech101_skips_background_and_renames_classes(tmp_path):
    make("caltech101", str(tmp_path), num_classes=6, with_split=False)
    dataset = build("caltech101", str(tmp_path))
    # Sorted folders: Faces, Leopards, Motorbikes, accordion, airplanes, anchor.
    assert dataset.classnames == ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"]
    for item in dataset.train_x + dataset.val + dataset.test:
        assert "BACKGROUND_Google" not in item.impath and "Faces_easy" not in item.impath


@pytest.mark.parametrize("name, expected", [
    ("oxford_pets", ["abyssinian", "american_bulldog"]),
    ("stanford_cars", ["2000 Make0 Model 0 Sedan", "2001 Make1 Model 1 Sedan"]),
    ("sun397", ["abbey", "airplane_cabin", "shop bakery"]),
    ("ucf101", ["Apply_Eye_Makeup", "Apply_Lipstick"]),
    ("fgvc_aircraft", ["707-320", "727-200", "737-200", "A300B4", "Cessna 172"]),
    ("oxford_flowers", ["pink primrose", "hard-leaved pocket orchid"]),
])
def test_classnames_created_from_raw_annotations(name, expected, tmp_path):
    make(name, str(tmp_path), with_split=False)
    dataset = build(name, str(tmp_path))
    assert dataset.classnames[:len(expected)] == expected


@pytest.mark.parametrize("name", SUBSAMPLING_DATASETS)
def test_base_and_new_halves_are_relabelled_from_zero(name, tmp_path):
    root = data_root(name, tmp_path)
    fake = make(name, root)
    full = build(name, root)
    base = build(name, root, subsample="base")
    new = build(name, root, subsample="new")
    n_base = math.ceil(NUM_CLASSES / 2)
    assert base.classnames == fake.classnames[:n_base]
    assert new.classnames == fake.classnames[n_base:]
    assert sorted(per_label(base.train_x)) == list(range(n_base))
    assert sorted(per_label(new.test)) == list(range(NUM_CLASSES - n_base))
    assert len(base.test) + len(new.test) == len(full.test)
    base_test_paths = {item.impath for item in full.test if item.label < n_base}
    assert {item.impath for item in base.test} == base_test_paths
    for item in new.test:
        assert new.classnames[item.label] == item.classname == full.classnames[item.label + n_base]


@pytest.mark.parametrize("name", SUBSAMPLING_DATASETS)
def test_k_shot_gives_k_per_class_unless_a_class_has_fewer(name, tmp_path, capsys):
    root = data_root(name, tmp_path)
    make(name, root)
    dataset = build(name, root, shots=3)
    out = capsys.readouterr().out
    assert "Creating a 3-shot dataset" in out and "Saving preprocessed few-shot data to" in out
    assert per_label(dataset.train_x) == {label: 3 for label in range(NUM_CLASSES)}
    if name != "imagenet":
        # min(3, 4) = 3 val shots wanted, but each fake class has only 2 val images.
        assert per_label(dataset.val) == {label: 2 for label in range(NUM_CLASSES)}
    assert len(dataset.test) == NUM_CLASSES * (4 if name == "imagenet" else 2)


def expected_fewshot(full_train, full_val, shots, seed):
    """Sampling as specified: global random seeded, train first, labels in first-seen order."""
    random.seed(seed)
    picked = []
    for source, k in ((full_train, shots), (full_val, min(shots, 4))):
        groups = {}
        for item in source:
            groups.setdefault(item.label, []).append(item)
        picked.append([x for items in groups.values()
                       for x in (random.sample(items, k) if len(items) >= k else items)])
    return picked


def test_fewshot_sample_follows_the_original_random_order(tmp_path):
    make("dtd", str(tmp_path), images_per_class=20)  # 10 train, 4 val per class
    full = build("dtd", str(tmp_path))
    train, val = expected_fewshot(full.train_x, full.val, shots=4, seed=3)
    dataset = build("dtd", str(tmp_path), shots=4, seed=3)
    assert [i.impath for i in dataset.train_x] == [i.impath for i in train]
    assert [i.impath for i in dataset.val] == [i.impath for i in val]


def test_same_seed_same_images_other_seed_other_images(tmp_path, capsys):
    make("oxford_pets", str(tmp_path), images_per_class=20)
    first = build("oxford_pets", str(tmp_path), shots=2, seed=1)
    os.remove(tmp_path / "oxford_pets" / "split_fewshot" / "shot_2-seed_1.json")
    again = build("oxford_pets", str(tmp_path), shots=2, seed=1)
    cached = build("oxford_pets", str(tmp_path), shots=2, seed=1)
    other = build("oxford_pets", str(tmp_path), shots=2, seed=2)
    out = capsys.readouterr().out
    assert "Loading preprocessed few-shot data from" in out
    paths = [i.impath for i in first.train_x]
    assert paths == [i.impath for i in again.train_x] == [i.impath for i in cached.train_x]
    assert paths != [i.impath for i in other.train_x]
    hashes = [line.rsplit(" ", 1)[1] for line in out.splitlines() if "image-list hash" in line]
    assert len(hashes) == 4 and hashes[0] == hashes[1] == hashes[2] != hashes[3]
    assert [d.fewshot_hash for d in (first, again, cached, other)] == hashes  # for results.json
    assert os.path.isfile(tmp_path / "oxford_pets" / "split_fewshot" / "shot_2-seed_2.json")


def test_fewshot_before_base_new_subsampling(tmp_path):
    make("food101", str(tmp_path), images_per_class=20)
    everything = build("food101", str(tmp_path), shots=2, seed=5)
    base = build("food101", str(tmp_path), shots=2, seed=5, subsample="base")
    expected = [i.impath for i in everything.train_x if i.label < 3]
    assert [i.impath for i in base.train_x] == expected


@pytest.mark.parametrize("name", ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                                  "food101", "sun397", "dtd", "eurosat", "ucf101"])
def test_missing_split_file_is_created_then_read(name, tmp_path, capsys):
    fake = make(name, str(tmp_path), with_split=False)
    split_file = DATASET_REGISTRY.get(registry_name(name)).split_file
    split_path = os.path.join(fake.dataset_dir, split_file)
    assert not os.path.exists(split_path)

    created = build(name, str(tmp_path), seed=1)
    out = capsys.readouterr().out
    assert "WARNING: split file" in out and "not comparable with published numbers" in out
    assert f"Saved split to {split_path}" in out
    assert created.classnames == fake.classnames
    sizes = (len(created.train_x), len(created.val), len(created.test))
    trainval_split = name in ("oxford_pets", "stanford_cars", "sun397", "ucf101")
    # 8 images per class: 6 train+val split 5/1 by split_trainval, else 4/2/2 by 50/20/30.
    assert sizes == ((25, 5, 10) if trainval_split else (20, 10, 10))

    with open(split_path) as f:
        split = json.load(f)
    assert sorted(split) == ["test", "train", "val"]
    assert not split["train"][0][0].startswith("/")
    read_back = build(name, str(tmp_path), seed=99)
    assert f"Reading split from {split_path}" in capsys.readouterr().out
    assert relpaths(read_back.train_x, str(tmp_path)) == relpaths(created.train_x, str(tmp_path))


def test_created_split_depends_only_on_the_seed(tmp_path):
    for folder in ("a", "b"):
        make("dtd", str(tmp_path / folder), with_split=False, images_per_class=10)
    first = build("dtd", str(tmp_path / "a"), seed=7)
    second = build("dtd", str(tmp_path / "b"), seed=7)
    assert relpaths(first.val, str(tmp_path / "a")) == relpaths(second.val, str(tmp_path / "b"))


def test_image_folder_without_val_holds_out_part_of_train(tmp_path):
    root = tmp_path / "mine"
    make("image_folder", str(root), num_classes=4, images_per_class=10)
    for name in os.listdir(root / "val"):
        for f in os.listdir(root / "val" / name):
            os.rename(root / "val" / name / f, root / "train" / name / f"moved_{f}")
    shutil.rmtree(root / "val")
    dataset = build("image_folder", str(root), shots=2)
    assert dataset.classnames == ["cat", "dog", "horse", "sheep"]
    full = build("image_folder", str(root))
    assert per_label(full.val) == {label: 1 for label in range(4)}  # round(7 * 0.2) = 1
    assert per_label(full.train_x) == {label: 6 for label in range(4)}
    assert per_label(dataset.train_x) == {label: 2 for label in range(4)}
    assert os.path.isfile(root / "split_ImageFolder.json")


def test_missing_dataset_folder_names_the_path_and_the_sources(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        build("oxford_pets", str(tmp_path))
    message = str(info.value)
    assert os.path.join(str(tmp_path), "oxford_pets") in message
    assert "robots.ox.ac.uk/~vgg/data/pets" in message
    assert "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs" in message


def test_missing_split_and_annotations_is_a_clear_error(tmp_path):
    fake = make("oxford_pets", str(tmp_path), with_split=False)
    os.remove(os.path.join(fake.dataset_dir, "annotations", "test.txt"))
    with pytest.raises(DatasetNotFoundError) as info:
        build("oxford_pets", str(tmp_path))
    message = str(info.value)
    assert "split_zhou_OxfordPets.json" in message
    assert os.path.join(fake.dataset_dir, "annotations", "test.txt") in message


def test_missing_image_listed_in_split_is_a_clear_error(tmp_path):
    fake = make("dtd", str(tmp_path))
    victim = os.path.join(fake.dataset_dir, "images", "banded", "banded_0002.jpg")
    os.remove(victim)
    with pytest.raises(FileNotFoundError) as info:
        build("dtd", str(tmp_path))
    assert victim in str(info.value) and "check_datasets.py" in str(info.value)


def test_datum_checks_its_file(tmp_path):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"jpg")
    item = Datum(str(image), 3, 1, "cat")
    assert (item.impath, item.label, item.domain, item.classname) == (str(image), 3, 1, "cat")
    with pytest.raises(FileNotFoundError, match="y.jpg"):
        Datum(str(tmp_path / "y.jpg"), 0, 0, "dog")
    with pytest.raises(TypeError):
        Datum(image, 0)


def test_bad_subsample_value_is_rejected(tmp_path):
    make("dtd", str(tmp_path))
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES must be one of"):
        build("dtd", str(tmp_path), subsample="half")


def test_unknown_dataset_name_lists_the_registered_ones():
    cfg = get_cfg_default()
    cfg.DATASET.NAME = "OxfordPet"
    with pytest.raises(ValueError) as info:
        build_dataset(cfg)
    assert "OxfordPets" in str(info.value) and "datasets/" in str(info.value)


def test_classes_short_of_shots_get_one_note_also_from_the_cache(tmp_path, capsys):
    make("dtd", str(tmp_path), images_per_class=10)  # 5 train, 2 val per class
    split_path = os.path.join(str(tmp_path), "dtd", "split_zhou_DescribableTextures.json")
    with open(split_path) as f:
        split = json.load(f)
    dropped = [e for e in split["train"] if e[2] == "banded"][:3]  # banded keeps 2 train images
    split["train"] = [e for e in split["train"] if e not in dropped]
    with open(split_path, "w") as f:
        json.dump(split, f)
    for _ in ("sampled", "cached"):
        dataset = build("dtd", str(tmp_path), shots=4, seed=1)
        notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Note:")]
        assert notes == [
            "Note: NUM_SHOTS=4, but train: 1 of 5 classes have fewer than 4 images (min 2: banded); "
            "val: 5 of 5 classes have fewer than 4 images (min 2: banded, blotchy, braided, "
            "bubbly, bumpy). These classes keep all their images."]
        assert per_label(dataset.train_x) == {0: 2, 1: 4, 2: 4, 3: 4, 4: 4}


def test_image_folder_stops_on_a_class_without_images_in_a_split(tmp_path):
    root = tmp_path / "mine"
    make("image_folder", str(root), num_classes=4)
    for image in os.listdir(root / "train" / "dog"):
        os.remove(root / "train" / "dog" / image)  # an empty class folder
    with pytest.raises(ValueError) as info:
        build("image_folder", str(root))
    message = str(info.value)
    assert 'Class "dog" has no images in train/' in message
    assert str(root / "train" / "dog") in message and "remove the class folder" in message

    os.rmdir(root / "train" / "dog")  # a class only the other splits have
    with pytest.raises(ValueError, match='Class "dog" has no images in train/'):
        build("image_folder", str(root))
    shutil.rmtree(root / "test" / "horse")
    shutil.rmtree(root / "val" / "dog")
    shutil.rmtree(root / "test" / "dog")
    with pytest.raises(ValueError, match='Class "horse" has no images in test/'):
        build("image_folder", str(root))


def test_image_folder_labels_come_from_the_classes_of_all_splits(tmp_path):
    root = tmp_path / "mine"
    make("image_folder", str(root), num_classes=3)  # cat, dog, horse
    for split in ("train", "val", "test"):  # a class whose name sorts first
        shutil.copytree(root / split / "cat", root / split / "ant")
    dataset = build("image_folder", str(root))
    assert dataset.classnames == ["ant", "cat", "dog", "horse"]
    for items in (dataset.train_x, dataset.val, dataset.test):
        assert {(i.label, i.classname) for i in items} == set(enumerate(dataset.classnames))


def test_image_folder_split_file_with_an_untrained_class_is_refused(tmp_path):
    root = tmp_path / "mine"
    make("image_folder", str(root))
    build("image_folder", str(root))  # records the split
    split_path = root / "split_ImageFolder.json"
    split = json.loads(split_path.read_text())
    # every image still listed (else the split is rebuilt from the folders), dog's train ones as val
    split["val"] += [e for e in split["train"] if e[2] == "dog"]
    split["train"] = [e for e in split["train"] if e[2] != "dog"]
    split_path.write_text(json.dumps(split))
    with pytest.raises(ValueError) as info:
        build("image_folder", str(root))
    assert 'lists class "dog" in "val" but not in "train"' in str(info.value)
    assert str(split_path) in str(info.value) and "Delete that file" in str(info.value)


def test_own_dataset_is_named_by_its_tag_or_its_folder(tmp_path, capsys):
    root = tmp_path / "my_flowers"
    make("image_folder", str(root))
    dataset = build("image_folder", str(root) + "/")
    assert dataset.tag == "my_flowers"
    assert 'Own dataset "my_flowers" (DATASET.TAG' in capsys.readouterr().out
    cfg = get_cfg_default()
    assert cfg.DATASET.TAG == ""
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.TAG = str(root), "ImageFolder", "flowers_v2"
    assert build_dataset(cfg).tag == "flowers_v2"


@pytest.mark.parametrize("entry, shown", [
    (["images/banded/banded_0001.jpg", 0], '["images/banded/banded_0001.jpg", 0]'),
    ({"path": "a.jpg", "label": 0}, '{"path": "a.jpg", "label": 0}'),
    (["banded/banded_0001.jpg", "zero", "banded"], '["banded/banded_0001.jpg", "zero", "banded"]'),
])
def test_split_entry_of_the_wrong_shape_is_named(tmp_path, entry, shown):
    fake = make("dtd", str(tmp_path))
    split_path = os.path.join(fake.dataset_dir, "split_zhou_DescribableTextures.json")
    with open(split_path) as f:
        split = json.load(f)
    split["val"][3] = entry
    with open(split_path, "w") as f:
        json.dump(split, f)
    with pytest.raises(ValueError) as info:
        build("dtd", str(tmp_path))
    message = str(info.value)
    assert message.startswith(f'Split file {split_path}: entry 3 of the "val" list is {shown}; ')
    assert "expected [relative_path, label, classname]" in message
