"""The two data containers every dataset class builds on: ``Datum`` and ``DatasetBase``.

``Datum`` keeps its fields in ``_impath``, ``_label``, ``_domain`` and ``_classname``
and must stay importable from this module: few-shot caches written by the original
engine pickle ``Datum`` objects under this exact path, and unpickling restores those
attribute names.
"""
import os
import random
from collections import OrderedDict


class Datum:
    """One labelled image: its path, label, domain and class name.

    The image file must exist when the object is built, so that a wrong
    ``DATASET.ROOT`` or an incomplete download is caught while the dataset is
    read, not later inside a data-loader worker.
    """

    def __init__(self, impath="", label=0, domain=0, classname=""):
        if not isinstance(impath, str):
            raise TypeError(
                f"Datum: impath must be a str, got {type(impath).__name__} ({impath!r})"
            )
        if not os.path.isfile(impath):
            raise FileNotFoundError(
                f'No image file found at "{impath}" (label {label}, class "{classname}"). '
                "The dataset is incomplete, or DATASET.ROOT (--root) points to the wrong "
                "folder. Check the layout with: python tools/check_datasets.py --root <DATA>"
            )
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @classmethod
    def unchecked(cls, impath, label=0, domain=0, classname=""):
        """Build a Datum without touching the disk (for large, already validated lists)."""
        item = cls.__new__(cls)
        item._impath = impath
        item._label = label
        item._domain = domain
        item._classname = classname
        return item

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return (
            f"Datum(impath={self._impath!r}, label={self._label}, "
            f"domain={self._domain}, classname={self._classname!r})"
        )


class DatasetBase:
    """Holds the train_x / train_u / val / test lists of a dataset and their class names."""

    dataset_dir = ""  # the folder of the dataset under DATASET.ROOT
    domains = []  # domain names, for multi-domain datasets only

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        if not train_x:
            raise ValueError(
                f"{type(self).__name__}: the training split is empty, so the number of "
                "classes cannot be determined. Check that the dataset folder holds images "
                "and that the split file lists training images."
            )
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        """Largest label + 1 (labels are assumed to start at 0)."""
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source):
        """Return ({label: classname}, [classnames sorted by label])."""
        pairs = {(item.label, item.classname) for item in data_source}
        mapping = {label: classname for label, classname in pairs}
        labels = sorted(mapping)
        return mapping, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains):
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains):
        for domain in input_domains:
            if domain not in self.domains:
                raise ValueError(
                    f"Input domain must belong to {self.domains}, but got [{domain}]"
                )

    def download_data(self, url, dst, from_gdrive=True):
        raise NotImplementedError(
            f"Automatic download is not built in. Download {url} yourself, extract it to "
            f"{os.path.dirname(dst) or '.'}, and see configs/datasets and datasets/sources.json "
            "for the expected layout and mirrors."
        )

    @staticmethod
    def split_dataset_by_label(data_source):
        """Group items by label, keyed in order of first appearance."""
        groups = OrderedDict()
        for item in data_source:
            groups.setdefault(item.label, []).append(item)
        return groups

    @staticmethod
    def split_dataset_by_domain(data_source):
        """Group items by domain, keyed in order of first appearance."""
        groups = OrderedDict()
        for item in data_source:
            groups.setdefault(item.domain, []).append(item)
        return groups

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """Draw ``num_shots`` items per label from each source with Python's global ``random``.

        The order of random calls matches the original engine (sources in order,
        labels in order of first appearance, one ``random.sample`` per label), so a
        seeded run selects the same images as the original code on the same split.
        A label with fewer items keeps all of them, unless ``repeat`` draws with
        replacement.
        """
        if num_shots < 1:
            return data_sources[0] if len(data_sources) == 1 else data_sources

        print(f"Creating a {num_shots}-shot dataset")
        outputs = []
        for data_source in data_sources:
            sampled = []
            for items in self.split_dataset_by_label(data_source).values():
                if len(items) >= num_shots:
                    sampled.extend(random.sample(items, num_shots))
                elif repeat:
                    sampled.extend(random.choices(items, k=num_shots))
                else:
                    sampled.extend(items)
            outputs.append(sampled)
        return outputs[0] if len(outputs) == 1 else outputs
