"""Small file, JSON, image and name-matching helpers."""
import difflib
import errno
import json
import os
import os.path as osp
import secrets
import warnings

from .errors import OutputWriteError

__all__ = [
    "mkdir_if_missing", "check_isfile", "read_json", "write_json", "atomic_write_bytes",
    "atomic_write_text", "listdir_nohidden", "read_image", "tolist_if_not",
    "closest_match", "check_availability", "download_url",
]

# Where registered modules live, quoted by every "not available" error.
PLUGIN_PACKAGE_HINT = (
    "Trainers and datasets register themselves when their module is imported: "
    "a trainer module must live in the project's `trainers/` package and a dataset "
    "module in its `datasets/` package (every module there is imported automatically), "
    "or be imported before the build."
)


def mkdir_if_missing(dirname):
    if not dirname:
        return
    try:
        os.makedirs(dirname, exist_ok=True)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise


def check_isfile(fpath):
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn('No file found at "{}"'.format(fpath))
    return isfile


def _atomic_write(fpath, write_fn, mode):
    """Write through a temp file in the same folder, then rename over the target,
    so that a crash never leaves a half-written file behind. The temp file is created
    with mode 0666 minus the umask, as open() would create the target, so others keep
    the access they would have to an ordinarily written file."""
    dirname = osp.dirname(osp.abspath(fpath))
    tmp = osp.join(dirname, f".{osp.basename(fpath)}.{secrets.token_hex(6)}.tmp")
    try:
        mkdir_if_missing(dirname)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, mode) as f:
                write_fn(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, fpath)
        except BaseException:
            if osp.exists(tmp):
                os.remove(tmp)
            raise
    except Exception as exc:
        cause = _os_error_behind(exc)
        if cause is None or isinstance(exc, OutputWriteError):
            raise
        error = OutputWriteError(f'Cannot write "{fpath}": {cause.strerror or cause}. Check that the '
                                 "folder is writable and the disk has space.")
        error.errno = cause.errno  # callers tell a full disk (ENOSPC) apart; the message stays as is
        raise error from exc


def _os_error_behind(exc):
    """The OSError that ``exc`` is or was raised from: torch.save reports a failed write (a full
    disk) as "RuntimeError: [enforce fail at inline_container.cc]" raised while handling it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write_text(fpath, text):
    _atomic_write(fpath, lambda f: f.write(text), "w")


def atomic_write_bytes(fpath, write_fn):
    """``write_fn(fileobj)`` writes the content, e.g. ``lambda f: torch.save(obj, f)``."""
    _atomic_write(fpath, write_fn, "wb")


def read_json(fpath):
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj, fpath):
    """Dassl's layout (indent 4, separators (',', ': ')), written atomically."""
    atomic_write_text(fpath, json.dumps(obj, indent=4, separators=(",", ": ")))


def listdir_nohidden(path, sort=False):
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def read_image(path):
    """Open an image as RGB, with an error that says which file and what to check."""
    from PIL import Image, UnidentifiedImageError

    if not osp.exists(path):
        raise FileNotFoundError(
            f'Image not found: "{path}". Check DATASET.ROOT and that the dataset is fully '
            "downloaded and prepared (python tools/check_datasets.py --root <DATA> lists what is missing)."
        )
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise OSError(
            f'Cannot read image "{path}" ({type(exc).__name__}: {exc}). The file is '
            "corrupt or not an image; re-download or remove it from the dataset."
        ) from exc


def tolist_if_not(x):
    if not isinstance(x, list):
        x = [x]
    return x


def closest_match(name, candidates):
    """The candidate most similar to ``name``: one equal up to letter case if any,
    else the highest SequenceMatcher ratio (ties go to the last one, as in Dassl).
    None when there are no candidates."""
    candidates = list(candidates)
    for cand in candidates:
        if str(cand).lower() == str(name).lower():
            return cand
    best, best_ratio = None, -1.0
    for cand in candidates:
        ratio = difflib.SequenceMatcher(None, str(name), str(cand)).ratio()
        if ratio >= best_ratio:
            best, best_ratio = cand, ratio
    return best


def check_availability(requested, available):
    """Raise if ``requested`` is not among ``available``; the message lists the
    registered names, suggests the closest one and says where modules must live."""
    available = list(available)
    if requested in available:
        return
    suggestion = closest_match(requested, available)
    guess = " (do you mean [{}]?)".format(suggestion) if suggestion is not None else ""
    raise ValueError(
        "The requested one is expected to belong to {}, but got [{}]{}. {}".format(
            available, requested, guess, PLUGIN_PACKAGE_HINT
        )
    )


def download_url(url, dst):
    """Download ``url`` to ``dst`` (used only by dataset helpers; needs network)."""
    import urllib.request

    mkdir_if_missing(osp.dirname(dst))
    tmp = dst + ".part"
    urllib.request.urlretrieve(url, tmp)
    os.replace(tmp, dst)
