"""Image-list caches: few-shot samples and ImageNet's folder lists.

The original engine pickles ``{"train": [Datum], ...}`` with absolute paths into
``split_fewshot/shot_{K}-seed_{S}.pkl`` and ``imagenet/preprocessed.pkl``. Many users
share one data folder between several code bases, so such a ``.pkl`` is only ever
read here, never written, changed or replaced. Ours is a JSON file beside it
(``shot_{K}-seed_{S}.json``, ``preprocessed.json``):

* readable without pickle, with image paths relative to the dataset folder, so a
  moved ``DATASET.ROOT`` keeps it valid;
* with a header of what it was built from (dataset, a hash of the source lists,
  shots, seed); a mismatch, a missing image or an unreadable file makes it stale,
  and it is rebuilt with the reason printed.

A valid original ``.pkl`` is used first: it is what the original code uses on this
folder, so both code bases train on the same images.

A shared data folder may be read-only. A cache (or an own dataset's split) that cannot be
written there is kept in a per-user folder instead, ``$XDG_CACHE_HOME/mudpt-toolbox/datasets/``
(default ``~/.cache/...``), one sub-folder per dataset folder, and read from there next time.
"""
import hashlib
import io
import json
import os
import pickle

from dassl.data.datasets.base_dataset import Datum

from dassl.utils import atomic_write_text

CACHE_FORMAT = "image-list-cache/2"  # the JSON files written here
# An earlier version of this toolbox pickled a header and tuples under the original's
# .pkl name; the original code fails on such a file ('tuple' object has no attribute 'label').
OLD_PICKLE_FORMAT = "image-list-cache/1"
OLD_FORMAT_SUFFIX = ".old-format"
_FILES_CHECKED_IN_LARGE_CACHES = 64  # ImageNet's lists hold >1M paths; check a spread sample
USER_CACHE_NAME = "mudpt-toolbox"
_NOTED_READ_ONLY = set()  # dataset folders whose read-only note was printed (one note per folder)


class StaleCacheError(Exception):
    """The cache cannot be used; the message says why."""


class _DatumOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain containers and Datum objects, nothing else (caches are data, not code)."""

    def find_class(self, module, name):
        if (module, name) == ("dassl.data.datasets.base_dataset", "Datum"):
            return Datum
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in cache")


def relative_to(impath, dataset_dir):
    prefix = dataset_dir.rstrip(os.sep) + os.sep
    if impath.startswith(prefix):
        return impath[len(prefix):]
    return None


def list_fingerprint(named_lists, dataset_dir):
    """A short hash of image lists (relative path, label, class name), independent of the root."""
    digest = hashlib.sha1()
    for name in sorted(named_lists):
        digest.update(f"[{name}]".encode())
        for item in named_lists[name]:
            relpath = relative_to(item.impath, dataset_dir) or item.impath
            digest.update(f"{relpath}\t{item.label}\t{item.classname}\n".encode())
    return digest.hexdigest()[:16]


def file_fingerprint(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:16]


def user_cache_path(path, dataset_dir):
    """Where ``path`` (a file inside ``dataset_dir``) is kept when ``dataset_dir`` is read-only:
    the per-user cache, one folder per dataset folder (its name and a hash of where it is)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    real = os.path.realpath(dataset_dir)
    key = hashlib.sha1(real.encode()).hexdigest()[:12]
    folder = f"{os.path.basename(real) or 'root'}-{key}"
    return os.path.join(base, USER_CACHE_NAME, "datasets", folder, os.path.relpath(path, dataset_dir))


def save_beside_data(path, dataset_dir, write, what):
    """``write(target)`` at ``path`` in the dataset folder, or, when that folder cannot be written
    (a read-only shared folder), at ``user_cache_path``. Returns the path written, None if neither
    could be (the run goes on without the file)."""
    try:
        write(path)
        return path
    except OSError as exc:
        reason = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        fallback = user_cache_path(path, dataset_dir)
        try:
            write(fallback)
        except OSError as second:
            print(f"Note: could not save the {what} {path} ({reason}) nor {fallback} ({second}); "
                  "this run goes on without it.")
            return None
    if dataset_dir not in _NOTED_READ_ONLY:
        _NOTED_READ_ONLY.add(dataset_dir)
        why = getattr(reason, "strerror", None) or reason
        print(f"Note: the dataset folder {dataset_dir} cannot be written ({why}); "
              f"its caches are kept per user in {os.path.normpath(user_cache_path(dataset_dir, dataset_dir))} "
              "(set XDG_CACHE_HOME to move them).")
    return fallback


class ImageListCache:
    """One cache: ours at ``<stem>.json``, the original engine's at ``<stem>.pkl``.

    ``load()`` returns ``{split: [Datum]}`` from the first usable file or None;
    the caller then builds the lists and calls ``save()``.
    """

    def __init__(self, stem, dataset_dir, header, split_names, what="cache",
                 check_every_file=True):
        self.path = stem + ".json"
        self.original_path = stem + ".pkl"
        self.user_path = user_cache_path(self.path, dataset_dir)  # used when the data folder is read-only
        self.dataset_dir = dataset_dir
        self.header = dict(header)
        self.split_names = list(split_names)
        self.what = what
        self.check_every_file = check_every_file

    def load(self, validate=None, announce=""):
        """``validate(lists)`` raises StaleCacheError for lists that do not fit this run;
        ``announce`` (with ``{}`` for the path) is printed before a file is read."""
        lists = None
        if os.path.exists(self.original_path):
            lists = self._load_pickle(validate, announce)
        for path in (self.path, self.user_path):
            if lists is None and os.path.exists(path):
                if announce:
                    print(announce.format(path))
                try:
                    lists = self._checked(self._read_json(path), validate)
                except StaleCacheError as exc:
                    print(f"The {self.what} {path} cannot be used: {exc}. Rebuilding it.")
        return lists

    def save(self, named_lists):
        """Atomically write ``{"header": ..., <split>: [[relpath, label, domain, classname]]}``."""
        content = {"header": dict(self.header, format=CACHE_FORMAT)}
        for name, items in named_lists.items():
            records = []
            for item in items:
                relpath = relative_to(item.impath, self.dataset_dir)
                if relpath is None:
                    raise ValueError(f"Cannot cache {item.impath}: it is not inside the dataset "
                                     f"folder {self.dataset_dir}")
                records.append([relpath, item.label, item.domain, item.classname])
            content[name] = records
        text = json.dumps(content)
        # A read-only shared data folder: kept per user instead (the lists are right either way).
        self.saved_path = save_beside_data(self.path, self.dataset_dir,
                                           lambda target: atomic_write_text(target, text), self.what)

    # -- the original's .pkl ---------------------------------------------------------------
    def _load_pickle(self, validate, announce):
        path = self.original_path
        if announce:
            print(announce.format(path))
        try:
            content = _unpickle_data(path)
            self._require_lists(content)
        except StaleCacheError as exc:
            # Whose file this is cannot be told, so it is left as it is.
            print(f"The {self.what} {path} cannot be used: {exc}. It is left unchanged.")
            return None

        header = content.get("header")
        if isinstance(header, dict) and header.get("format") == OLD_PICKLE_FORMAT:
            return self._convert_old_format(content, validate)
        try:
            lists = self._checked(self._read_datum_lists(content), validate)
        except StaleCacheError as exc:
            print(f"The {self.what} {path} (original engine format) cannot be used: {exc}. "
                  "It is left unchanged for the original code.")
            return None
        print("Note: this is a legacy cache without header (original engine format); "
              f"its image paths were re-rooted under {self.dataset_dir}")
        return lists

    def _convert_old_format(self, content, validate):
        """Our earlier format under the original's name: keep its lists in our file, and
        move it aside. Left in place, it would make the original code fail on this shared
        folder; moved, the original rebuilds its own .pkl with the same images (same seed,
        same split), and nothing is deleted."""
        path = self.original_path
        try:
            self._check_header(content["header"])
            lists = self._checked(
                {name: self._read_records(content[name], name) for name in self.split_names},
                validate)
            self.save(lists)
            kept = f"its lists are now in {self.path}"
        except StaleCacheError as exc:
            lists = None
            kept = f"it cannot be used ({exc}) and is rebuilt as {self.path}"
        aside = path + OLD_FORMAT_SUFFIX
        try:
            os.replace(path, aside)
            print(f"Moved {path} to {aside}: it is in an earlier format of this toolbox, which "
                  f"the original CoOp/Dassl code cannot read; {kept}.")
        except FileNotFoundError:
            pass  # another run moved it first
        except OSError as exc:
            print(f"Note: could not move {path} aside ({exc}); the original CoOp/Dassl code "
                  f"cannot read it. Delete or rename it; {kept}.")
        return lists

    def _read_datum_lists(self, content):
        """Original engine lists: Datum objects with absolute paths from some old root."""
        anchor = os.path.basename(self.dataset_dir.rstrip(os.sep))
        lists = {}
        for name in self.split_names:
            items = []
            for old in content[name]:
                if not isinstance(old, Datum):
                    raise StaleCacheError(f"its {name} list holds {type(old).__name__}, not Datum")
                relpath = (relative_to(old.impath, self.dataset_dir)
                           or _path_after_anchor(old.impath, anchor))
                if relpath is None:
                    raise StaleCacheError(
                        f"the legacy path {old.impath} has no '{anchor}' folder to re-root it "
                        f"under {self.dataset_dir}")
                items.append(Datum.unchecked(os.path.join(self.dataset_dir, relpath), old.label,
                                             old.domain, old.classname))
            lists[name] = items
        return lists

    # -- our JSON ------------------------------------------------------------------------
    def _read_json(self, path):
        try:
            with open(path, encoding="utf-8") as f:
                content = json.load(f)
        except (OSError, ValueError) as exc:
            raise StaleCacheError(
                f"the file cannot be read ({type(exc).__name__}: {exc})") from None
        self._require_lists(content)
        header = content.get("header")
        if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT:
            raise StaleCacheError("it was written in an unknown format")
        self._check_header(header)
        return {name: self._read_records(content[name], name) for name in self.split_names}

    # -- shared checks ---------------------------------------------------------------------
    def _require_lists(self, content):
        if not isinstance(content, dict) or any(
                not isinstance(content.get(name), list) for name in self.split_names):
            raise StaleCacheError(f"it does not hold the lists {self.split_names}")

    def _check_header(self, header):
        for key, expected in self.header.items():
            if header.get(key) != expected:
                raise StaleCacheError(f"it was built for {key}={header.get(key)!r}, but this "
                                      f"run has {key}={expected!r}")

    def _read_records(self, records, name):
        prefix = os.path.join(self.dataset_dir, "")  # joined by hand: ImageNet has >1M records
        items = []
        for record in records:
            if not (isinstance(record, (list, tuple)) and len(record) == 4
                    and isinstance(record[0], str) and not os.path.isabs(record[0])
                    and isinstance(record[1], int)):
                raise StaleCacheError(f"its {name} list holds a malformed entry {record!r}")
            relpath, label, domain, classname = record
            items.append(Datum.unchecked(prefix + relpath, label, domain, classname))
        return items

    def _checked(self, lists, validate):
        _check_files_exist(lists, self.check_every_file)
        if validate is not None:
            validate(lists)
        return lists


def _unpickle_data(path):
    try:
        with open(path, "rb") as f:
            return _DatumOnlyUnpickler(io.BytesIO(f.read())).load()
    except Exception as exc:  # any unreadable or foreign pickle is simply not used
        raise StaleCacheError(f"the file cannot be read ({type(exc).__name__}: {exc})") from None


def _path_after_anchor(old_path, anchor):
    parts = old_path.replace("\\", "/").split("/")
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == anchor and index + 1 < len(parts):
            return os.path.join(*parts[index + 1:])
    return None


def _check_files_exist(lists, check_every_file):
    for name, items in lists.items():
        if check_every_file or len(items) <= _FILES_CHECKED_IN_LARGE_CACHES:
            to_check = items
        else:
            step = len(items) / _FILES_CHECKED_IN_LARGE_CACHES
            to_check = [items[int(i * step)] for i in range(_FILES_CHECKED_IN_LARGE_CACHES)]
            to_check.append(items[-1])
        missing = [item.impath for item in to_check if not os.path.isfile(item.impath)]
        if missing:
            raise StaleCacheError(
                f"{len(missing)} of the {len(to_check)} checked {name} images are missing "
                f"(e.g. {missing[0]})"
            )


def check_sampled_from(sampled, full, split_name, max_per_label):
    """A few-shot list must be drawn from the current full list, at most ``max_per_label`` per label."""
    available = {(item.impath, item.label) for item in full}
    per_label = {}
    for item in sampled:
        if (item.impath, item.label) not in available:
            raise StaleCacheError(
                f"its {split_name} image {item.impath} (label {item.label}) is not in the "
                f"current {split_name} split, so the split changed since the cache was written"
            )
        per_label[item.label] = per_label.get(item.label, 0) + 1
    crowded = [label for label, count in per_label.items() if count > max_per_label]
    if crowded:
        raise StaleCacheError(
            f"label {crowded[0]} has {per_label[crowded[0]]} {split_name} images, more than "
            f"{max_per_label} shots"
        )
