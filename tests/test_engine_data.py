"""Data layer: transforms, DatasetWrapper batches, loaders and samplers."""

import pytest
import torch
from PIL import Image

from dassl.config import get_cfg_default
from dassl.data import DatasetWrapper, build_data_loader
from dassl.data.datasets import Datum
from dassl.data.samplers import RandomClassSampler, RandomDomainSampler, build_sampler
from dassl.data.transforms import build_transform

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def coop_cfg():
    cfg = get_cfg_default()
    cfg.merge_from_list([
        "INPUT.TRANSFORMS", "['random_resized_crop', 'random_flip', 'normalize']",
        "INPUT.INTERPOLATION", "bicubic", "INPUT.PIXEL_MEAN", str(CLIP_MEAN),
        "INPUT.PIXEL_STD", str(CLIP_STD), "DATALOADER.NUM_WORKERS", "0", "SEED", "1",
        "DATASET.NAME", "Toy",
    ])
    return cfg


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    data = []
    for i in range(10):
        path = str(root / f"{i}.jpg")
        Image.new("RGB", (40 + i, 30), (i * 20, 0, 0)).save(path)
        data.append(Datum(impath=path, label=i % 2, domain=i % 3, classname=f"c{i % 2}"))
    return data


def test_coop_transform_lines_and_order(capsys):
    cfg = coop_cfg()
    # listed in a different order: the pipeline order is fixed anyway
    train = build_transform(cfg, is_train=True,
                            choices=["normalize", "random_flip", "random_resized_crop"])
    test = build_transform(cfg, is_train=False)
    assert capsys.readouterr().out.splitlines() == [
        "Building transform_train",
        "+ random resized crop (size=(224, 224), scale=(0.08, 1.0))",
        "+ random flip",
        "+ to torch tensor of range [0, 1]",
        f"+ normalization (mean={CLIP_MEAN}, std={CLIP_STD})",
        "Building transform_test",
        "+ resize the smaller edge to 224",
        "+ 224x224 center crop",
        "+ to torch tensor of range [0, 1]",
        f"+ normalization (mean={CLIP_MEAN}, std={CLIP_STD})",
    ]
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert [type(t).__name__ for t in test.transforms] == ["Resize", "CenterCrop", "ToTensor",
                                                          "Normalize"]
    assert str(test.transforms[0].interpolation) == "InterpolationMode.BICUBIC"
    img = Image.new("RGB", (300, 250), (255, 255, 255))
    assert test(img).shape == (3, 224, 224) and train(img).shape == (3, 224, 224)


def test_resize_when_no_crop_and_bad_names(capsys):
    cfg = coop_cfg()
    tfm = build_transform(cfg, is_train=True, choices=["random_flip", "cutout"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["Building transform_train", "+ resize to 224x224"]
    assert lines[-1] == "+ cutout (n_holes=1, length=16)"
    assert type(tfm.transforms[0]).__name__ == "Resize"
    with pytest.raises(ValueError, match="did you mean 'random_flip'"):
        build_transform(cfg, choices=["random_flipp"])
    cfg.INPUT.INTERPOLATION = "lanczos"
    with pytest.raises(KeyError, match="INPUT.INTERPOLATION"):
        build_transform(cfg)
    cfg.INPUT.NO_TRANSFORM = True
    assert build_transform(cfg) is None
    assert "Note: no transform is applied!" in capsys.readouterr().out


def test_batch_dict_keys_and_types(items):
    cfg = coop_cfg()
    cfg.INPUT.SIZE = (32, 32)
    cfg.DATALOADER.RETURN_IMG0 = True
    tfm = build_transform(cfg, is_train=False)
    loader = build_data_loader(cfg, "SequentialSampler", items, batch_size=4, tfm=tfm,
                               is_train=False)
    batch = next(iter(loader))
    assert set(batch) == {"img", "img0", "label", "domain", "impath", "index"}
    assert batch["img"].shape == (4, 3, 32, 32) and batch["img"].dtype == torch.float32
    assert batch["img0"].shape == (4, 3, 32, 32)
    for key in ("label", "domain", "index"):
        assert batch[key].dtype == torch.int64
    assert batch["label"].tolist() == [0, 1, 0, 1] and batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["impath"] == [d.impath for d in items[:4]]
    assert len(loader) == 3  # test loaders keep the last partial batch


def test_k_transforms_and_transform_lists(items):
    cfg = coop_cfg()
    cfg.INPUT.SIZE = (16, 16)
    cfg.DATALOADER.K_TRANSFORMS = 2
    tfm = build_transform(cfg, is_train=False)
    sample = DatasetWrapper(cfg, items, transform=[tfm, tfm], is_train=True)[0]
    assert isinstance(sample["img"], list) and len(sample["img"]) == 2
    assert isinstance(sample["img2"], list)
    assert torch.is_tensor(DatasetWrapper(cfg, items, transform=tfm, is_train=False)[0]["img"])
    with pytest.raises(ValueError, match="Cannot augment the image 2 times because transform is None"):
        DatasetWrapper(cfg, items, transform=None, is_train=True)


def test_drop_last_rule_and_empty_split(items):
    cfg = coop_cfg()
    cfg.INPUT.SIZE = (16, 16)
    tfm = build_transform(cfg, is_train=True)
    assert len(build_data_loader(cfg, "RandomSampler", items, batch_size=4, tfm=tfm)) == 2
    # smaller than one batch: one batch of all items
    small = build_data_loader(cfg, "RandomSampler", items[:3], batch_size=4, tfm=tfm)
    assert len(small) == 1 and next(iter(small))["img"].shape[0] == 3
    with pytest.raises(ValueError) as info:
        build_data_loader(cfg, "RandomSampler", [], batch_size=4, tfm=tfm, split_name="train_x")
    msg = str(info.value)
    assert 'train_x split of dataset "Toy"' in msg and "DATASET.ROOT" in msg


def test_missing_and_corrupt_images_name_the_file(items, tmp_path):
    cfg = coop_cfg()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    gone = tmp_path / "gone.jpg"
    Image.new("RGB", (8, 8)).save(gone)
    data = [Datum(impath=str(bad), label=0), Datum(impath=str(gone), label=0)]
    gone.unlink()
    wrapper = DatasetWrapper(cfg, data, transform=None)
    with pytest.raises(OSError, match=r'Cannot read image ".*broken\.jpg"'):
        wrapper[0]
    with pytest.raises(FileNotFoundError, match=r'Image not found: ".*gone\.jpg".*DATASET\.ROOT'):
        wrapper[1]


def test_seeded_loaders_shuffle_reproducibly(items):
    cfg = coop_cfg()
    cfg.INPUT.SIZE = (16, 16)
    tfm = build_transform(cfg, is_train=True)

    def order():
        torch.manual_seed(5)
        loader = build_data_loader(cfg, "RandomSampler", items, batch_size=2, tfm=tfm)
        return [b["index"].tolist() for b in loader]

    first = order()
    assert first == order()
    assert sorted(sum(first, [])) == list(range(10)) and sum(first, []) != list(range(10))


class DrawingWrapper(torch.utils.data.Dataset):
    """Stands for DatasetWrapper with one random augmentation: draws one torch.rand(1) per item."""

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.data_source = data_source

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        return {"index": idx, "draw": torch.rand(1)}


def test_loader_follows_the_original_global_rng_semantics():
    """Same seed, same batches and augmentation draws as the original engine (values taken
    from Dassl.pytorch's build_data_loader on torch 2.13: no generator, no worker_init_fn)."""
    from dassl.utils import set_random_seed
    cfg = coop_cfg()
    source = [Datum.unchecked(f"{i}.jpg", i % 4) for i in range(20)]
    set_random_seed(1)
    loader = build_data_loader(cfg, "RandomSampler", source, batch_size=4, is_train=True,
                               dataset_wrapper=DrawingWrapper)
    epoch1 = list(loader)
    assert [b["index"].tolist() for b in epoch1] == [
        [14, 13, 12, 8], [3, 17, 7, 6], [10, 1, 4, 0], [19, 18, 16, 15], [5, 9, 11, 2]]
    draws = [[round(x, 4) for x in b["draw"].flatten().tolist()] for b in epoch1[:2]]
    assert draws == [[0.0293, 0.7999, 0.3971, 0.7544], [0.5695, 0.4388, 0.6387, 0.5247]]
    assert [b["index"].tolist() for b in loader] == [
        [19, 11, 9, 5], [1, 3, 18, 12], [10, 6, 7, 0], [8, 4, 15, 13], [16, 17, 2, 14]]


def test_samplers(items):
    cls = RandomClassSampler(items, batch_size=4, n_ins=2)
    idx = list(cls)
    assert len(idx) == len(cls) and len(idx) % 4 == 0
    for start in range(0, len(idx), 2):  # every pair of n_ins shares a label
        assert items[idx[start]].label == items[idx[start + 1]].label
    with pytest.raises(ValueError, match="must be no less than n_ins"):
        RandomClassSampler(items, batch_size=2, n_ins=4)
    dom = list(RandomDomainSampler(items, batch_size=3, n_domain=3))
    assert [items[i].domain for i in dom[:3]] and len({items[i].domain for i in dom[:3]}) == 3
    with pytest.raises(ValueError, match="divisible"):
        RandomDomainSampler(items, batch_size=4, n_domain=3)
    with pytest.raises(ValueError, match="Unknown sampler type: RandomSampeler"):
        build_sampler("RandomSampeler", data_source=items)
