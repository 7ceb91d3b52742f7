"""``DataManager`` builds the dataset, transforms and loaders; ``DatasetWrapper``
turns ``Datum`` lists into the batch dicts trainers consume."""
import signal

import torch
from tabulate import tabulate
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import default_collate
from torchvision.transforms import Compose, Normalize, Resize, ToTensor

from ..utils.errors import BadImageError, MissingImageError
from ..utils.tools import read_image
from .samplers import build_sampler
from .transforms import INTERPOLATION_MODES, build_transform


def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64,
                      n_domain=0, n_ins=2, tfm=None, is_train=True, dataset_wrapper=None,
                      split_name=None):
    """A DataLoader over ``data_source`` (a list of ``Datum``). The train loader
    drops the last incomplete batch unless the split is smaller than one batch."""
    split_name = split_name or ("train" if is_train else "test")
    if not data_source:
        raise ValueError(_empty_split_message(cfg, split_name))
    sampler = build_sampler(sampler_type, cfg=cfg, data_source=data_source,
                            batch_size=batch_size, n_domain=n_domain, n_ins=n_ins)
    if dataset_wrapper is None:
        dataset_wrapper = DatasetWrapper
    # No private generator, as in the original engine: the sampler's permutation and the
    # main-process augmentations draw from torch's global RNG, and workers get torch's default
    # seeding (base seed drawn from the global RNG + worker id). So a seeded run here sees the
    # same batches and augmentations as the original code. The workers' only init (no RNG use):
    # Ctrl-C is the main process's to handle (see ignore_interrupts).
    wrapper = dataset_wrapper(cfg, data_source, transform=tfm, is_train=is_train)
    wrapper.split_name = split_name  # named in the error for an unreadable image
    skip_bad = cfg.DATALOADER.get("SKIP_BAD_IMAGES", False)
    loader = torch.utils.data.DataLoader(
        wrapper,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=(torch.cuda.is_available() and cfg.USE_CUDA),
        collate_fn=collate_readable if skip_bad else None,
        worker_init_fn=ignore_interrupts if cfg.DATALOADER.NUM_WORKERS > 0 else None,
    )
    if len(loader) == 0:
        raise ValueError(_empty_split_message(cfg, split_name))
    return loader


def ignore_interrupts(worker_id):
    """In a loader worker: ignore Ctrl-C. A terminal sends it to the whole process group; the
    main process then finishes its step, saves the position and stops the workers itself, where
    workers dying of it would make the main process fail with "DataLoader worker exited
    unexpectedly" before it can save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _empty_split_message(cfg, split_name):
    return (
        f'The {split_name} split of dataset "{cfg.DATASET.NAME}" yields no batch. Check '
        f'DATASET.ROOT ("{cfg.DATASET.ROOT}"), that the dataset is fully prepared, '
        "and DATASET.NUM_SHOTS / DATASET.SUBSAMPLE_CLASSES."
    )


def collate_readable(items):
    """Batch the items whose image could be read (DATALOADER.SKIP_BAD_IMAGES); the batch records
    how many were left out, and is None when none could be read."""
    readable = [item for item in items if item is not None]
    if not readable:
        return None
    batch = default_collate(readable)
    batch["n_skipped"] = len(items) - len(readable)
    return batch


class DataManager:
    """Builds ``dataset``, the transforms and ``train_loader_x``, ``train_loader_u``
    (None without unlabelled data), ``val_loader`` (None without val) and ``test_loader``."""

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        from .datasets import build_dataset  # imported here: the datasets package imports us back

        dataset = build_dataset(cfg)

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        loader_cfg = cfg.DATALOADER
        self.train_loader_x = build_data_loader(
            cfg, sampler_type=loader_cfg.TRAIN_X.SAMPLER, data_source=dataset.train_x,
            batch_size=loader_cfg.TRAIN_X.BATCH_SIZE, n_domain=loader_cfg.TRAIN_X.N_DOMAIN,
            n_ins=loader_cfg.TRAIN_X.N_INS, tfm=tfm_train, is_train=True,
            dataset_wrapper=dataset_wrapper, split_name="train_x",
        )

        self.train_loader_u = None
        if dataset.train_u:
            u_cfg = loader_cfg.TRAIN_X if loader_cfg.TRAIN_U.SAME_AS_X else loader_cfg.TRAIN_U
            self.train_loader_u = build_data_loader(
                cfg, sampler_type=u_cfg.SAMPLER, data_source=dataset.train_u,
                batch_size=u_cfg.BATCH_SIZE, n_domain=u_cfg.N_DOMAIN, n_ins=u_cfg.N_INS,
                tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper,
                split_name="train_u",
            )

        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg, sampler_type=loader_cfg.TEST.SAMPLER, data_source=dataset.val,
                batch_size=loader_cfg.TEST.BATCH_SIZE, tfm=tfm_test, is_train=False,
                dataset_wrapper=dataset_wrapper, split_name="val",
            )

        self.test_loader = build_data_loader(
            cfg, sampler_type=loader_cfg.TEST.SAMPLER, data_source=dataset.test,
            batch_size=loader_cfg.TEST.BATCH_SIZE, tfm=tfm_test, is_train=False,
            dataset_wrapper=dataset_wrapper, split_name="test",
        )

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test

        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        dataset_name = cfg.DATASET.NAME
        source_domains = cfg.DATASET.SOURCE_DOMAINS
        target_domains = cfg.DATASET.TARGET_DOMAINS
        table = [["Dataset", dataset_name]]
        if source_domains:
            table.append(["Source", source_domains])
        if target_domains:
            table.append(["Target", target_domains])
        table.append(["# classes", f"{self.num_classes:,}"])
        table.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            table.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            table.append(["# val", f"{len(self.dataset.val):,}"])
        table.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(table))


class DatasetWrapper(TorchDataset):
    """Reads one ``Datum`` and returns ``{"label", "domain", "impath", "index", "img",
    ["img2", ...], ["img0"]}``."""

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform  # a transform or a list of them
        self.is_train = is_train
        # Augment K times only when training
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0

        if self.k_tfm > 1 and transform is None:
            raise ValueError(
                "Cannot augment the image {} times because transform is None".format(self.k_tfm)
            )

        interp_mode = INTERPOLATION_MODES.get(cfg.INPUT.INTERPOLATION,
                                              INTERPOLATION_MODES["bilinear"])
        to_tensor = [Resize(cfg.INPUT.SIZE, interpolation=interp_mode), ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = Compose(to_tensor)

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {
            "label": item.label,
            "domain": item.domain,
            "impath": item.impath,
            "index": idx,
        }
        try:
            img0 = read_image(item.impath)
        except OSError as exc:
            split = getattr(self, "split_name", "")
            where = f"the {split} split of {self.cfg.DATASET.NAME}" if split else self.cfg.DATASET.NAME
            if self.cfg.DATALOADER.get("SKIP_BAD_IMAGES", False):
                print(f"Warning: skipping an image of {where}: {exc}")
                return None
            error = MissingImageError if isinstance(exc, FileNotFoundError) else BadImageError
            raise error(f"{exc} (It belongs to {where}; to leave unreadable images out of their batch "
                        "instead, set DATALOADER.SKIP_BAD_IMAGES True.)") from None

        if self.transform is not None:
            if isinstance(self.transform, (list, tuple)):
                for i, tfm in enumerate(self.transform):
                    keyname = "img" if i == 0 else f"img{i + 1}"
                    output[keyname] = self._transform_image(tfm, img0)
            else:
                output["img"] = self._transform_image(self.transform, img0)
        else:
            output["img"] = img0

        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform_image(self, tfm, img0):
        img_list = [tfm(img0) for _ in range(self.k_tfm)]
        return img_list[0] if len(img_list) == 1 else img_list
