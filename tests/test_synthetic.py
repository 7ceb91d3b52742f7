"""The synthetic world, its benchmark dataset and the mini-CLIP pretraining script."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from dassl.data.datasets import DATASET_REGISTRY
from datasets.benchmark import DatasetNotFoundError
from datasets.synthetic import shapes, world
from tool_modules import load_tool
from trainers import build_cfg
from trainers.clip_prompting import load_clip, tokenize

PLAIN = world.Domain("plain", backgrounds=("plain",), noise=(0.0, 0.0), colour_jitter=0.0, max_angle=0.0)


def test_the_same_seed_draws_the_same_scene_and_caption():
    first, second, other = (np.random.default_rng(seed) for seed in (5, 5, 6))
    a = world.render(first, "red", "star", world.BENCHMARK)
    b = world.render(second, "red", "star", world.BENCHMARK)
    c = world.render(other, "red", "star", world.BENCHMARK)
    assert a.image.shape == (world.IMAGE_SIZE, world.IMAGE_SIZE, 3) and a.image.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)
    assert world.caption(first, a) == world.caption(second, b)


def test_classes_are_every_colour_shape_phrase():
    names = world.class_names()
    assert len(names) == len(set(names)) == len(world.COLOURS) * len(world.SHAPES) == 64
    assert names[:2] == ["red circle", "red square"]
    assert world.parse_class_name("blue heart") == ("blue", "heart")
    with pytest.raises(ValueError, match="not a class of the synthetic world"):
        world.parse_class_name("blue hexagon")
    # every colour and shape is one token of CLIP's tokenizer: class names compose two words
    for word in list(world.COLOURS) + list(world.SHAPES):
        assert int(tokenize([word]).argmax()) == 2


def test_captions_name_the_scene_in_several_phrasings():
    rng = np.random.default_rng(0)
    phrasings = set()
    for _ in range(200):
        scene = world.random_scene(rng)
        text = world.caption(rng, scene)
        assert scene.colour in text.split(" ")[0:12] or scene.colour + "." in text
        assert scene.shape in text
        other_words = [c for c in world.COLOURS if c != scene.colour] + [s for s in world.SHAPES if s != scene.shape]
        assert not any(word in text.replace(".", " ").split() for word in other_words)
        phrasings.add(text.replace(scene.colour, "{c}").replace(scene.shape, "{s}"))
    assert len(phrasings) >= 10
    assert int(tokenize([max(phrasings, key=len)]).argmax()) >= 18  # long phrasings train later positions


@pytest.mark.parametrize("look", list(world.LOOKS))
def test_a_look_changes_the_picture_and_its_caption_names_it(look):
    plain = world.render(np.random.default_rng(2), "red", "square", PLAIN)
    scene = world.render(np.random.default_rng(2), "red", "square", PLAIN, look=look)
    assert scene.look == look and not np.array_equal(scene.image, plain.image)
    captions = {world.caption(np.random.default_rng(seed), scene) for seed in range(30)}
    assert captions == {phrasing.format("red square") for phrasing in world.LOOKS[look]}
    red = (np.abs(scene.image.astype(int) - world.COLOURS["red"]).sum(axis=2) < 30).mean()
    if look == "close-up":  # a window into the object: mostly its colour
        assert red > 0.5
    if look in ("dark", "bright", "faded"):  # the colour is changed everywhere
        assert red == 0
    with pytest.raises(ValueError, match="unknown look 'sepia'"):
        world.render(np.random.default_rng(2), "red", "square", look="sepia")


def test_looks_leave_the_benchmarks_draws_alone():
    """A scene without a look (pinned here) draws nothing for the looks: the benchmark's images do
    not depend on them."""
    image = world.render(np.random.default_rng(7), "blue", "moon", world.BENCHMARK).image
    assert hashlib.sha256(image.tobytes()).hexdigest()[:16] == "364c82b6b6718fdb"


@pytest.mark.parametrize("colour", list(world.COLOURS))
def test_the_object_has_the_named_colour(colour):
    image = world.render(np.random.default_rng(1), colour, "square", PLAIN).image.reshape(-1, 3)
    palette = np.array(list(world.COLOURS.values()), dtype=float)
    exact = (image == np.array(world.COLOURS[colour])).all(axis=1)
    assert exact.mean() > 0.1  # a solid square of exactly the named colour (no jitter, no noise)
    nearest = np.linalg.norm(image[exact][:1, None].astype(float) - palette[None], axis=2).argmin()
    assert list(world.COLOURS)[nearest] == colour


def test_the_shapes_are_distinct_masks_with_an_outline_along_their_edge():
    masks = {shape: world.shape_mask(shape, 56, 56, 36, 0.3, outline=2) for shape in world.SHAPES}
    for shape, (fill, band) in masks.items():
        assert 0.1 < fill.mean() < 0.5, shape
        edge = (fill > 0.05) & (fill < 0.95)
        assert band[edge].min() > 0.4 and band[fill == 1].mean() < 0.2 and band[fill == 0].mean() < 0.1, shape
    masks = {shape: fill > 0.5 for shape, (fill, _) in masks.items()}
    for shape, mask in masks.items():
        for other, other_mask in masks.items():
            if other != shape:
                iou = (mask & other_mask).sum() / (mask | other_mask).sum()
                assert iou < 0.85, (shape, other, iou)


def test_base_and_new_halves_share_every_colour_and_shape():
    classes = shapes.benchmark_classes()
    assert sorted(classes) == sorted(world.class_names())
    base, new = classes[:32], classes[32:]
    for half in (base, new):
        assert {world.parse_class_name(n)[0] for n in half} == set(world.COLOURS)
        assert {world.parse_class_name(n)[1] for n in half} == set(world.SHAPES)


def make_cfg(root, subsample="all", shots=-1, seed=1):
    cfg = build_cfg()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "SyntheticShapes"
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    return cfg


def test_the_benchmark_is_generated_on_first_use_in_the_standard_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "SPLIT_SIZES", {"train": 3, "val": 1, "test": 2})
    dataset = DATASET_REGISTRY.get("SyntheticShapes")(make_cfg(tmp_path, "base", shots=2))
    folder = tmp_path / "synthetic_shapes"
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not a private temp one
    assert sorted(os.listdir(folder)) == ["classnames.txt", "descriptions.json", "generator.json", "images",
                                          "split_fewshot",
                                          "split_zhou_SyntheticShapes.json"]
    classes = (folder / "classnames.txt").read_text().splitlines()
    assert classes == shapes.benchmark_classes()
    split = json.loads((folder / "split_zhou_SyntheticShapes.json").read_text())
    assert {part: len(entries) for part, entries in split.items()} == {"train": 192, "val": 64, "test": 128}
    assert split["test"][0] == ["red_circle/test_0000.jpg", 0, "red circle"]
    assert all((folder / "images" / relpath).is_file() for relpath, _, _ in split["train"])
    # base half, 2 shots: the CoOp flow (few-shot file, relabelled first half)
    assert dataset.classnames == classes[:32] and len(dataset.train_x) == 64 and len(dataset.test) == 64
    new = DATASET_REGISTRY.get("SyntheticShapes")(make_cfg(tmp_path, "new", shots=2))
    assert new.classnames == classes[32:] and {item.label for item in new.test} == set(range(32))


def test_images_depend_only_on_class_split_and_index(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    shapes.write_benchmark(str(small), ["red star", "blue moon"], {"train": 1, "val": 1, "test": 1})
    shapes.write_benchmark(str(large), ["blue moon", "green heart"], {"train": 2, "val": 1, "test": 1})
    same = "images/blue_moon/train_0000.jpg"
    assert (small / same).read_bytes() == (large / same).read_bytes()
    assert (small / same).read_bytes() != (large / "images/blue_moon/train_0001.jpg").read_bytes()


def test_a_lost_split_file_is_rebuilt_and_a_foreign_folder_refused(tmp_path):
    folder = tmp_path / "synthetic_shapes"
    written = shapes.write_benchmark(str(folder), shapes.benchmark_classes()[:4], {"train": 2, "val": 1, "test": 1})
    os.remove(folder / shapes.SPLIT_FILE)
    dataset = DATASET_REGISTRY.get("SyntheticShapes")(make_cfg(tmp_path))
    rebuilt = [[os.path.relpath(d.impath, folder / "images"), d.label, d.classname] for d in dataset.train_x]
    assert rebuilt == written["train"]

    generator = json.loads((folder / "generator.json").read_text())
    (folder / "generator.json").write_text(json.dumps(dict(generator, version=0)))
    with pytest.raises(DatasetNotFoundError, match="Delete the folder: it is generated again"):
        DATASET_REGISTRY.get("SyntheticShapes")(make_cfg(tmp_path))


def test_an_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "write_benchmark", fail)
    with pytest.raises(KeyboardInterrupt):
        shapes.generate(str(tmp_path / "synthetic_shapes"))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Pretraining script
# ---------------------------------------------------------------------------------------------
TINY_RUN = ["--layers", "2", "--image-size", "64", "--patch-size", "16", "--batch-size", "16", "--steps", "40",
            "--lr", "2e-3", "--warmup", "5", "--threads", "1", "--quiet"]


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_pretraining_lowers_the_loss_and_writes_loadable_reproducible_weights(tmp_path, capsys):
    tool = load_tool("pretrain_mini_clip")
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    assert tool.main(TINY_RUN + ["--output", str(first)]) == 0
    assert tool.main(TINY_RUN + ["--output", str(second)]) == 0
    assert sha256(first) == sha256(second)  # same seed and threads: the same file, byte for byte
    # "loss 2.921 (first 10 steps) -> 2.234 (last 10)"; ln(16) = 2.77 is chance level
    report = capsys.readouterr().out.splitlines()[-1]
    start, end = (float(report.split(" (first")[0].split()[-1]), float(report.split(" (last")[0].split()[-1]))
    assert end < start - 0.3, report

    state = torch.load(first, weights_only=True)
    assert state["token_embedding.weight"].shape == (49408, 64)
    assert state["positional_embedding"].shape == (77, 64)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    model = load_clip("ViT-B/16", str(first))  # MODEL.BACKBONE.PATH's loader
    assert model.visual.input_resolution == 64 and len(model.transformer.resblocks) == 2
    assert torch.equal(model.token_embedding.weight, state["token_embedding.weight"].float())


def test_a_pretraining_batch_holds_each_class_twice_once_in_a_named_look():
    tool = load_tool("pretrain_mini_clip")
    stream = tool.PairStream(seed=0, batch_size=16, image_size=64)
    images, ids = next(stream)
    assert images.shape == (16, 3, 64, 64) and ids.shape == (16, 77)
    pairs = stream.next_pairs()
    assert len({scene.class_name for scene, _ in pairs}) == 8
    for (plain, _), (looked, caption) in zip(pairs[::2], pairs[1::2]):
        assert plain.class_name == looked.class_name and plain.look is None and looked.look in world.LOOKS
        assert caption in {phrasing.format(looked.class_name) for phrasing in world.LOOKS[looked.look]}


def test_pretraining_rejects_bad_shapes():
    tool = load_tool("pretrain_mini_clip")
    with pytest.raises(SystemExit):
        tool.parse_args(["--width", "100"])
    with pytest.raises(SystemExit):
        tool.parse_args(["--image-size", "100", "--patch-size", "32"])
    with pytest.raises(SystemExit):
        tool.parse_args(["--batch-size", "15"])  # pairs: an even number
