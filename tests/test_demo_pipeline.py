"""The experiment scripts end to end with the tiny CLIP: train on base, test on new, print Table III."""
import os
import subprocess
import sys

from datasets.fake import make_fake_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_base2new_scripts_and_table(tmp_path, tiny_clip_path):
    make_fake_dataset("eurosat", str(tmp_path / "data"), num_classes=4, images_per_class=6)
    env = dict(os.environ, DATA=str(tmp_path / "data"), CLIP_PATH=tiny_clip_path,
               OUTPUT=str(tmp_path / "output"), PYTHON=sys.executable)
    opts = ["DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "2"]
    for script in ("base2new_train.sh", "base2new_test.sh"):
        done = subprocess.run(["bash", f"scripts/mudpt/{script}", "eurosat", "1", *opts], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = tmp_path / "output/base2new/train_base/eurosat/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1"
    assert (run / "MultimodalDeepPromptTuning" / "model.pth.tar-2").is_file()
    test_log = (tmp_path / "output/base2new/test_new/eurosat/shots_16/MuDPT/vit_b16_bz4_ep10_nctx4_depth12/seed1"
                / "log.txt").read_text()
    assert "SUBSAMPLE NEW CLASSES!" in test_log and "(epoch = 2)" in test_log

    # a finished run is skipped, not redone
    again = subprocess.run(["bash", "scripts/mudpt/base2new_train.sh", "eurosat", "1", *opts], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "exist" in again.stdout

    table = subprocess.run([sys.executable, "parse_test_res.py", "--tables", str(tmp_path / "output"),
                            "--table", "base2new"], cwd=ROOT, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "Table III" in table.stdout and "EuroSAT" in table.stdout and "MuDPT" in table.stdout
