"""The few-shot cache ``split_fewshot/shot_{K}-seed_{S}.pkl``: load it if valid, else sample and save."""
import os

from .cache import (StaleCacheError, check_sampled_from, list_fingerprint, load_cache,
                    save_cache)


def fewshot_cache_path(split_fewshot_dir, num_shots, seed):
    return os.path.join(split_fewshot_dir, f"shot_{num_shots}-seed_{seed}.pkl")


def load_or_sample_fewshot(dataset, num_shots, seed, sources):
    """Return ``{split: few-shot list}`` for ``sources = {split: (full list, shots)}``.

    Sampling goes through ``dataset.generate_fewshot_dataset`` split by split, in
    the order of ``sources`` (train first), exactly as the original does.
    """
    path = fewshot_cache_path(dataset.split_fewshot_dir, num_shots, seed)
    full_lists = {name: items for name, (items, _) in sources.items()}
    header = {
        "dataset": type(dataset).__name__,
        "split_hash": list_fingerprint(full_lists, dataset.dataset_dir),
        "num_shots": num_shots,
        "seed": seed,
    }
    if os.path.exists(path):
        print(f"Loading preprocessed few-shot data from {path}")
        try:
            cached = load_cache(path, header, list(sources), dataset.dataset_dir)
            for name, (items, shots) in sources.items():
                check_sampled_from(cached[name], items, name, shots)
            report_sample(cached, num_shots, seed, dataset.dataset_dir)
            return cached
        except StaleCacheError as exc:
            print(f"The few-shot cache {path} cannot be used: {exc}. Rebuilding it.")

    sampled = {
        name: dataset.generate_fewshot_dataset(items, num_shots=shots)
        for name, (items, shots) in sources.items()
    }
    print(f"Saving preprocessed few-shot data to {path}")
    save_cache(path, header, sampled, dataset.dataset_dir)
    report_sample(sampled, num_shots, seed, dataset.dataset_dir)
    return sampled


def report_sample(lists, num_shots, seed, dataset_dir):
    """One log line identifying the sample: the seed selects the images, so runs can be compared."""
    print(f"Few-shot sample: {num_shots} shots, SEED={seed}, image-list hash "
          f"{list_fingerprint(lists, dataset_dir)}")
