"""Samplers selected by ``DATALOADER.<LOADER>.SAMPLER``."""
import copy
import random
from collections import defaultdict

import numpy as np
from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler

from ..utils.tools import closest_match

AVAILABLE_SAMPLERS = ["RandomSampler", "SequentialSampler", "RandomDomainSampler",
                      "SeqDomainSampler", "RandomClassSampler"]


def indices_by(data_source, field):
    """{value of ``field`` (domain, label): [indices of its items]}, in order of first appearance."""
    groups = defaultdict(list)
    for i, item in enumerate(data_source):
        groups[getattr(item, field)].append(i)
    return groups


class RandomDomainSampler(Sampler):
    """Each batch holds ``batch_size // n_domain`` random items from each of
    ``n_domain`` randomly chosen domains (all domains when ``n_domain <= 0``)."""

    def __init__(self, data_source, batch_size, n_domain):
        self.data_source = data_source
        self.domain_dict = indices_by(data_source, "domain")
        self.domains = list(self.domain_dict.keys())
        if n_domain is None or n_domain <= 0:
            n_domain = len(self.domains)
        if batch_size % n_domain != 0:
            raise ValueError(
                f"RandomDomainSampler needs the batch size ({batch_size}) to be divisible by "
                f"the number of domains per batch ({n_domain}); adjust BATCH_SIZE or N_DOMAIN"
            )
        self.n_img_per_domain = batch_size // n_domain
        self.batch_size = batch_size
        self.n_domain = n_domain
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        domain_dict = copy.deepcopy(self.domain_dict)
        final_idxs = []
        stop_sampling = False
        while not stop_sampling:
            selected_domains = random.sample(self.domains, self.n_domain)
            for domain in selected_domains:
                idxs = domain_dict[domain]
                selected_idxs = random.sample(idxs, self.n_img_per_domain)
                final_idxs.extend(selected_idxs)
                for idx in selected_idxs:
                    domain_dict[domain].remove(idx)
                if len(domain_dict[domain]) < self.n_img_per_domain:
                    stop_sampling = True
        return iter(final_idxs)

    def __len__(self):
        return self.length


class SeqDomainSampler(Sampler):
    """Each batch holds ``batch_size // n_domains`` random items of every domain,
    domains in a fixed order."""

    def __init__(self, data_source, batch_size):
        self.data_source = data_source
        self.domain_dict = indices_by(data_source, "domain")
        self.domains = sorted(self.domain_dict.keys())
        n_domain = len(self.domains)
        if n_domain == 0 or batch_size % n_domain != 0:
            raise ValueError(
                f"SeqDomainSampler needs the batch size ({batch_size}) to be divisible by the "
                f"number of domains ({n_domain})"
            )
        self.n_img_per_domain = batch_size // n_domain
        self.batch_size = batch_size
        self.n_domain = n_domain
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        domain_dict = copy.deepcopy(self.domain_dict)
        final_idxs = []
        stop_sampling = False
        while not stop_sampling:
            for domain in self.domains:
                idxs = domain_dict[domain]
                selected_idxs = random.sample(idxs, self.n_img_per_domain)
                final_idxs.extend(selected_idxs)
                for idx in selected_idxs:
                    domain_dict[domain].remove(idx)
                if len(domain_dict[domain]) < self.n_img_per_domain:
                    stop_sampling = True
        return iter(final_idxs)

    def __len__(self):
        return self.length


class RandomClassSampler(Sampler):
    """Each batch holds ``n_ins`` items of each of ``batch_size // n_ins`` random
    classes; classes with fewer than ``n_ins`` items are oversampled."""

    def __init__(self, data_source, batch_size, n_ins):
        if batch_size < n_ins:
            raise ValueError(
                "batch_size={} must be no less than n_ins={}".format(batch_size, n_ins)
            )
        self.data_source = data_source
        self.batch_size = batch_size
        self.n_ins = n_ins
        self.ncls_per_batch = self.batch_size // self.n_ins
        self.index_dic = indices_by(data_source, "label")
        self.labels = list(self.index_dic.keys())
        if len(self.labels) < self.ncls_per_batch:
            raise ValueError(
                f"RandomClassSampler needs at least {self.ncls_per_batch} classes per batch "
                f"but the data has {len(self.labels)}; lower BATCH_SIZE or raise N_INS"
            )
        self.length = len(list(self.__iter__()))

    def __iter__(self):
        batch_idxs_dict = defaultdict(list)
        for label in self.labels:
            idxs = copy.deepcopy(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = np.random.choice(idxs, size=self.n_ins, replace=True).tolist()
            random.shuffle(idxs)
            batch_idxs = []
            for idx in idxs:
                batch_idxs.append(idx)
                if len(batch_idxs) == self.n_ins:
                    batch_idxs_dict[label].append(batch_idxs)
                    batch_idxs = []
        avai_labels = copy.deepcopy(self.labels)
        final_idxs = []
        while len(avai_labels) >= self.ncls_per_batch:
            selected_labels = random.sample(avai_labels, self.ncls_per_batch)
            for label in selected_labels:
                batch_idxs = batch_idxs_dict[label].pop(0)
                final_idxs.extend(batch_idxs)
                if len(batch_idxs_dict[label]) == 0:
                    avai_labels.remove(label)
        return iter(final_idxs)

    def __len__(self):
        return self.length


def build_sampler(sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=16):
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)  # global torch RNG, as in Dassl
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomDomainSampler":
        return RandomDomainSampler(data_source, batch_size, n_domain)
    if sampler_type == "SeqDomainSampler":
        return SeqDomainSampler(data_source, batch_size)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins)
    raise ValueError(
        "Unknown sampler type: {} (did you mean {}?); valid types: {}".format(
            sampler_type, closest_match(sampler_type, AVAILABLE_SAMPLERS), AVAILABLE_SAMPLERS
        )
    )
