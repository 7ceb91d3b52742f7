"""The few-shot and cross-dataset configs of the 2024-2025 methods run end to end: train with the
config (tiny CLIP, one short epoch), then, for cross-dataset, evaluate the trained weights on another
dataset's classes. (Base-to-new runs through the scripts in each method's own test file; which config
each script picks is checked there too.)"""
import json
import os

import pytest

from datasets.fake import make_fake_dataset
from train_runs import restore_streams, run_log, train_argv  # noqa: F401  (fixture)

SHORT = ["OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0", "DATASET.NUM_SHOTS", "2",
         "DATALOADER.TRAIN_X.BATCH_SIZE", "4"]
RUNS = [  # (trainer, few-shot config or None, cross-dataset config or None, overrides)
    ("MMRL", "vit_b16_few_shot", "vit_b16_mmrlpp_cross_datasets", []),
    ("HiCroPL", "vit_b16_c2_ep50_batch32_16ctx_few_shot", "vit_b16_c2_ep5_batch32_2ctx_cross_datasets", []),
    ("LwEIB", None, "vit_b16_ep10_batch128_cross_datasets", []),
    ("TCP", "vit_b16", "vit_b16_imagenet", []),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two fake datasets (source eurosat, target dtd) and one descriptions file for all their classes."""
    root = tmp_path_factory.mktemp("data")
    names = []
    for dataset in ("eurosat", "dtd"):
        names += make_fake_dataset(dataset, str(root), num_classes=4, images_per_class=6).classnames
    path = root / "descriptions.json"
    path.write_text(json.dumps({name: [f"a photo of {name}.", f"{name}, up close."] for name in names}))
    return str(root), str(path)


@pytest.mark.parametrize("trainer, few_shot, cross_dataset, opts", RUNS, ids=[r[0] for r in RUNS])
def test_few_shot_and_cross_dataset_configs_run(data, tiny_clip_path, tmp_path, trainer, few_shot, cross_dataset,
                                               opts):
    root, descriptions = data
    opts = SHORT + ["DATASET.DESCRIPTIONS", descriptions, *opts]
    if few_shot:
        log = run_log(train_argv(root, tiny_clip_path, tmp_path / "few_shot", trainer, few_shot, dataset="eurosat",
                                 opts=opts))
        assert "Finish training" in log and "* accuracy:" in log
    if cross_dataset:
        source = tmp_path / "source"
        log = run_log(train_argv(root, tiny_clip_path, source, trainer, cross_dataset, dataset="eurosat", opts=opts))
        assert "Finish training" in log
        target = run_log(train_argv(root, tiny_clip_path, tmp_path / "target", trainer, cross_dataset, dataset="dtd",
                                    flags=["--eval-only", "--model-dir", str(source), "--load-epoch", "1"],
                                    opts=opts))
        assert "(epoch = 1)" in target and "* accuracy:" in target
        assert os.path.isfile(tmp_path / "target" / "results.json")
