"""predict.py: a trained run's predictions on image files equal those its evaluation made."""
import contextlib
import io
import os

import pytest
import torch

import predict
import train
import trainers
from dassl.data.transforms import build_transform
from dassl.engine import TRAINER_REGISTRY
from dassl.utils.logger import close_logger
from datasets.fake import make_fake_dataset
from method_configs import descriptions_file, project_trainers

MUDPT_CONFIG = "configs/trainers/MuDPT/vit_b16_bz4_ep10_nctx4_depth12.yaml"
DATASET_CONFIG = "configs/datasets/caltech101.yaml"


@pytest.fixture(autouse=True)
def restore_streams():
    yield
    close_logger()


def run_and_evaluate(argv):
    """train.py in-process; returns {image path: class name} of its (final) evaluation."""
    args = train.parse_args(argv)
    trainer = train.prepare(args)
    train.run(trainer, args)
    close_logger()
    names = trainer.dm.dataset.classnames
    images = [item.impath for item in trainer.dm.dataset.test]  # the test loader's order
    return dict(zip(images, (names[label] for label in trainer.evaluator._y_pred))), names


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_clip_path):
    """MuDPT trained 1 epoch on the base classes of a generated Caltech101 (6 classes)."""
    tmp = tmp_path_factory.mktemp("predict")
    data = str(tmp / "data")
    make_fake_dataset("caltech101", data, num_classes=6, images_per_class=8)
    common = ["--root", data, "--seed", "1", "--trainer", "MuDPT", "--dataset-config-file", DATASET_CONFIG,
              "--config-file", MUDPT_CONFIG]
    opts = ["MODEL.BACKBONE.PATH", tiny_clip_path, "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "4"]
    out = str(tmp / "base")
    base_eval, _ = run_and_evaluate(common + ["--output-dir", out] + opts
                                    + ["OPTIM.MAX_EPOCH", "1", "DATASET.SUBSAMPLE_CLASSES", "base"])
    new_eval, new_names = run_and_evaluate(
        common + ["--output-dir", str(tmp / "new"), "--eval-only", "--model-dir", out, "--load-epoch", "1"]
        + opts + ["DATASET.SUBSAMPLE_CLASSES", "new"])
    return {"tmp": tmp, "data": data, "out": out, "base_eval": base_eval, "new_eval": new_eval,
            "new_names": new_names}


def top1(capsys, argv):
    """{image: top-1 class} from predict.py's printed lines."""
    predict.main(argv)
    lines = capsys.readouterr().out.splitlines()
    return {line.rsplit(": ", 1)[0]: line.rsplit(": ", 1)[1].split(",")[0].rsplit(" ", 1)[0] for line in lines}


def test_predict_reproduces_the_evaluation(base_run, capsys):
    images_dir = os.path.join(base_run["data"], "caltech-101", "101_ObjectCategories")
    got = top1(capsys, ["--model-dir", base_run["out"], "--load-epoch", "1", "--dataset-config-file",
                        DATASET_CONFIG, "--root", base_run["data"], images_dir, "--topk", "2"])
    expected = base_run["base_eval"]
    assert len(expected) == 6 and set(expected) <= set(got)  # the folder holds every test image
    assert {path: got[path] for path in expected} == expected
    assert len(set(expected.values())) > 1  # the check can tell classes apart


def test_a_class_list_other_than_the_trained_one(base_run, tmp_path, capsys):
    """Trained on the base classes, scored on the new ones from a file: as the eval-only run."""
    classnames = tmp_path / "new_classes.txt"
    classnames.write_text("# the new half of the classes\n" + "\n".join(base_run["new_names"]) + "\n\n")
    expected = base_run["new_eval"]
    csv_path = tmp_path / "p.csv"
    got = top1(capsys, ["--model-dir", base_run["out"], "--load-epoch", "1", "--classnames", str(classnames),
                        *expected, "--csv", str(csv_path)])
    assert got == expected and len(set(expected.values())) > 1
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "image,rank,class,probability" and len(rows) == 1 + 3 * len(expected)  # top-3 of 3
    probs = [float(r.rsplit(",", 1)[1]) for r in rows[1:4]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_run_without_config_yaml_given_trainer_and_config(base_run, tiny_clip_path, capsys):
    old = base_run["tmp"] / "old_layout"
    old.mkdir()
    os.symlink(os.path.join(base_run["out"], "MultimodalDeepPromptTuning"), old / "MultimodalDeepPromptTuning")
    argv = ["--model-dir", str(old), "--load-epoch", "1", "--dataset-config-file", DATASET_CONFIG,
            "--root", base_run["data"], *base_run["base_eval"]]
    with pytest.raises(SystemExit) as info:
        predict.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "has no config.yaml" in err and "older version" in err and "--trainer NAME --config-file" in err
    got = top1(capsys, argv + ["--trainer", "MuDPT", "--config-file", MUDPT_CONFIG, "--opts",
                               "MODEL.BACKBONE.PATH", tiny_clip_path, "DATASET.SUBSAMPLE_CLASSES", "base"])
    assert got == base_run["base_eval"]


PROJECT_TRAINERS = project_trainers()


@pytest.mark.parametrize("name", PROJECT_TRAINERS)
def test_every_trainer_scores_a_class_list_it_was_not_trained_on(name, tiny_clip_path, tmp_path):
    """Without a dataset: save from a 3-class model, load into a 5-class one, predict."""
    cfg = trainers.build_cfg()  # each method's defaults, in a few-shot run's config
    cfg.TRAINER.NAME = name
    cfg.DATASET.NUM_SHOTS = 16
    cfg.MODEL.BACKBONE.PATH = tiny_clip_path
    cfg.DATASET.DESCRIPTIONS = descriptions_file(tmp_path, ["cat", "dog", "bird", "ant", "bee", "wasp", "moth", "fly"])
    cfg.freeze()
    with contextlib.redirect_stdout(io.StringIO()):
        trained = TRAINER_REGISTRY.get(name)(cfg, classnames=["cat", "dog", "bird"])
        for module in trained.get_model_names():  # tensors unlike a fresh model's
            with torch.no_grad():
                for p in trained._models[module].parameters():
                    p.add_(0.01)
        trained.save_model(0, str(tmp_path))
        names = ["ant", "bee", "wasp", "moth", "fly"]
        trainer = predict.build_predictor(cfg, names, str(tmp_path), 1)
    assert trainer.dm is None and trainer.test_loader is None
    for module in trained.get_model_names():
        loaded = dict(trainer._models[module].named_parameters())
        for key, value in trained._models[module].named_parameters():
            if loaded[key].shape == value.shape:  # DPT's auxiliary head follows the class count
                assert torch.equal(loaded[key], value), key
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    for i in range(2):
        Image.new("RGB", (40, 30), (60 * i, 100, 200)).save(images / f"{i}.png")
    transform = build_transform(cfg, is_train=False)
    results = predict.predict(trainer, predict.find_images([str(images)]), transform, topk=3)
    assert [os.path.basename(path) for path, _ in results] == ["0.png", "1.png"]
    for _, top in results:
        assert len(top) == 3 and {n for n, _ in top} <= set(names)
        assert all(0 <= p <= 1 for _, p in top) and top[0][1] >= top[1][1] >= top[2][1]


def write_run_config(folder, trainer, clip_path):
    cfg = trainers.build_cfg()
    cfg.TRAINER.NAME = trainer
    cfg.MODEL.BACKBONE.PATH = clip_path
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    return str(folder)


def error_of(capsys, argv):
    with pytest.raises(SystemExit) as info:
        predict.main(argv)
    assert info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("predict.py: error: ")]
    assert len(errors) == 1
    return errors[0]


def test_clear_errors(tmp_path, tiny_clip_path, capsys):
    image = tmp_path / "a.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(image)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    zero_shot = write_run_config(tmp_path / "zs", "ZeroshotCLIP", tiny_clip_path)
    base = ["--model-dir", zero_shot, "--classnames", str(classes)]

    assert "is not a folder" in error_of(capsys, ["--model-dir", str(tmp_path / "none"), "--classnames",
                                                  str(classes), str(image)])
    assert "say which classes to score" in error_of(capsys, ["--model-dir", zero_shot, str(image)])
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    assert "holds no class names" in error_of(capsys, ["--model-dir", zero_shot, "--classnames",
                                                       str(tmp_path / "empty.txt"), str(image)])
    assert "cannot read --classnames" in error_of(capsys, ["--model-dir", zero_shot, "--classnames",
                                                           str(tmp_path / "missing.txt"), str(image)])
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("x")
    assert "no images found" in error_of(capsys, base + [str(tmp_path / "no_images")])
    assert "does not exist" in error_of(capsys, base + [str(tmp_path / "nope.jpg")])
    assert "leave them out" in error_of(capsys, base + ["--trainer", "CoOp", str(image)])
    unknown = write_run_config(tmp_path / "unknown", "NoSuchMethod", tiny_clip_path)
    assert 'trainer "NoSuchMethod"' in error_of(capsys, ["--model-dir", unknown, "--classnames",
                                                         str(classes), str(image)])

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    line = error_of(capsys, base + [str(image), str(bad)])
    assert f'cannot read image "{bad}"' in line

    coop = write_run_config(tmp_path / "coop", "CoOp", tiny_clip_path)  # no prompt_learner/ folder
    line = error_of(capsys, ["--model-dir", coop, "--load-epoch", "3", "--classnames", str(classes), str(image)])
    assert "prompt_learner/model.pth.tar-3" in line and "does not exist" in line
