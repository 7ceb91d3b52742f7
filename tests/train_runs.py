"""train.py driven in-process by the tests: its command line, exit code and messages."""
import pytest

import train
from dassl.utils.logger import close_logger

FAST = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "16"]


def train_argv(data_root, clip_path, out, trainer, config, dataset="caltech101", flags=(), opts=()):
    """``train.py`` arguments: ``config`` is a name in configs/trainers/<trainer>/, ``flags`` are
    command-line flags, ``opts`` KEY VALUE overrides (after the tiny CLIP and FAST)."""
    config_dir = "ZeroshotCLIP" if trainer.startswith("ZeroshotCLIP") else trainer
    return ["--root", str(data_root), "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", f"configs/datasets/{dataset}.yaml",
            "--config-file", f"configs/trainers/{config_dir}/{config}.yaml",
            "--output-dir", str(out), *flags, "MODEL.BACKBONE.PATH", str(clip_path), *FAST, *opts]


def exit_code(argv):
    """train.main in-process; its exit code (0 when it returns normally)."""
    try:
        train.main(argv)
        return 0
    except SystemExit as exc:
        return exc.code
    finally:
        close_logger()


def error_of(capsys, argv, code=2):
    """The message of a run that must stop with ``code`` and no traceback."""
    assert exit_code(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def run_log(argv):
    """Run to completion and return the run's log.txt."""
    assert exit_code(argv) == 0
    out = argv[argv.index("--output-dir") + 1]
    with open(f"{out}/log.txt") as f:
        return f.read()


@pytest.fixture(autouse=True)
def restore_streams():
    yield
    close_logger()
