"""The GPU checks behind tools/gpu_check.sh; writes REPORT_DIR/gpu_check.{json,md}.

    python tools/gpu_check.py REPORT_DIR [--device cuda|cpu] [--quick]

--device cpu (with --quick) runs the same steps on the CPU, to check the script itself.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# torch and the project's code are imported where they are used, after the arguments are
# parsed: --help and a wrong flag answer before torch loads.

TRAINERS = {  # trainer: (config, precision key node)
    "CoOp": ("vit_b16_ep50_ctxv1", "COOP"),
    "CoCoOp": ("vit_b16_c4_ep10_batch1_ctxv1", "COCOOP"),
    "MuDPT": ("vit_b16_bz4_ep10_nctx4_depth12", "MUDPT"),
}
PRECISIONS = ("fp32", "amp", "fp16")


def run(cmd, env=None, timeout=600):
    start = time.time()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    return done, time.time() - start


def tail(text, lines=15):
    return "\n".join(text.strip().splitlines()[-lines:])


def cuda_tests():
    done, seconds = run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests", "-p", "no:cacheprovider"])
    return {"check": "CUDA-marked tests", "ok": done.returncode == 0, "seconds": round(seconds, 1),
            "detail": tail(done.stdout, 3)}


def train_command(work, trainer, precision, out, extra=()):
    config, node = TRAINERS[trainer]
    return ["train.py", "--root", os.path.join(work, "data"), "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", "configs/datasets/caltech101.yaml",
            "--config-file", f"configs/trainers/{trainer}/{config}.yaml", "--output-dir", out,
            "MODEL.BACKBONE.PATH", os.path.join(work, "clip.pt"), "DATALOADER.NUM_WORKERS", "2",
            "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "4", f"TRAINER.{node}.PREC", precision, *extra]


def losses_of(log_path):
    with open(log_path) as f:
        return [float(line.split(" loss ")[1].split()[0]) for line in f if line.startswith("epoch [")]


def accuracy_of(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["metrics"]["accuracy"]


def training(work, device_env):
    rows = []
    for trainer in TRAINERS:
        for precision in PRECISIONS:
            out = os.path.join(work, "runs", f"{trainer}_{precision}")
            done, seconds = run([sys.executable, *train_command(work, trainer, precision, out)], device_env)
            row = {"check": f"{trainer} 1 epoch, {precision}", "seconds": round(seconds, 1)}
            if trainer == "MuDPT" and precision == "fp16":  # refused on purpose (NaN-prone)
                row.update(ok=done.returncode == 2 and "fp16" in done.stderr,
                           detail="refused with a clear message, as designed")
            elif done.returncode != 0:
                row.update(ok=False, detail=tail(done.stderr))
            else:
                losses = losses_of(os.path.join(out, "log.txt"))
                row.update(ok=bool(losses) and all(math.isfinite(x) for x in losses),
                           detail=f"losses {losses[0]:.4f} .. {losses[-1]:.4f}, accuracy {accuracy_of(out):.1f}%")
            rows.append(row)
    return rows


def two_processes(work, device_env):
    """torchrun with 2 processes against one process: same weights within 1e-6."""
    import torch

    if torch.cuda.device_count() < 2:
        return {"check": "torchrun, 2 processes", "ok": None, "seconds": 0,
                "detail": f"skipped: {torch.cuda.device_count()} GPU(s)"}
    single, double = os.path.join(work, "ddp1"), os.path.join(work, "ddp2")
    extra = ("DATALOADER.TRAIN_X.BATCH_SIZE", "4")
    run([sys.executable, *train_command(work, "CoOp", "fp32", single, extra)], device_env)
    done, seconds = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         *train_command(work, "CoOp", "fp32", double, extra)], device_env)
    if done.returncode != 0:
        return {"check": "torchrun, 2 processes", "ok": False, "seconds": round(seconds, 1), "detail": tail(done.stderr)}
    a, b = (torch.load(os.path.join(d, "prompt_learner", "model.pth.tar-1"), weights_only=True)["state_dict"]
            for d in (single, double))
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    return {"check": "torchrun, 2 processes", "ok": diff <= 1e-5 and accuracy_of(single) == accuracy_of(double),
            "seconds": round(seconds, 1), "detail": f"max weight difference to 1 process {diff:.2e}"}


def benchmark(report_dir, device, quick):
    path = os.path.join(report_dir, "benchmark.json")
    cmd = [sys.executable, "tools/benchmark.py", "--device", device, "--json", path, "--memory"]
    cmd += (["--tiny", "--repeats", "1", "--train-classes", "10", "--eval-classes", "10", "--eval-batches", "1"]
            if quick else ["--train-classes", "100", "1000", "--eval-classes", "100", "1000"])
    done, seconds = run(cmd)
    row = {"check": "tools/benchmark.py", "ok": done.returncode == 0, "seconds": round(seconds, 1),
           "detail": "see the table below" if done.returncode == 0 else tail(done.stderr)}
    table = json.load(open(path))["rows"] if done.returncode == 0 else []
    return row, table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report_dir")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny settings (to check this script on a CPU)")
    args = p.parse_args(argv)
    import dassl  # noqa: F401  (torchvision guard)
    import torch
    from tabulate import tabulate

    from dassl.utils import atomic_write_text, write_json

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU")
    os.makedirs(args.report_dir, exist_ok=True)
    device_env = {} if args.device == "cuda" else {"CUDA_VISIBLE_DEVICES": ""}
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        from datasets.fake import make_fake_dataset
        from trainers.clip_prompting import tiny_clip
        make_fake_dataset("caltech101", os.path.join(work, "data"), num_classes=6, images_per_class=10)
        torch.save(tiny_clip().state_dict(), os.path.join(work, "clip.pt"))
        checks = [cuda_tests()] if args.device == "cuda" else []
        checks += training(work, device_env)
        checks.append(two_processes(work, device_env) if args.device == "cuda" else
                      {"check": "torchrun, 2 processes", "ok": None, "seconds": 0, "detail": "skipped on CPU"})
        bench_row, bench_table = benchmark(args.report_dir, args.device, args.quick)
        checks.append(bench_row)
    report = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "seconds": round(time.time() - started, 1), "checks": checks, "benchmark": bench_table}
    write_json(report, os.path.join(args.report_dir, "gpu_check.json"))
    status = {True: "ok", False: "FAILED", None: "skipped"}
    lines = [f"# GPU check: {name}", "",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}; {report['seconds']:.0f} s in all.", "",
             tabulate([[c["check"], status[c["ok"]], c["seconds"], c["detail"].replace("\n", " ")] for c in checks],
                      headers=["check", "result", "seconds", "detail"], tablefmt="github"), ""]
    if bench_table:
        model = "tiny" if args.quick else "ViT-B/16-shaped"
        lines += [f"## Speed and memory ({model} CLIP, random weights)", "",
                  tabulate([list(r.values()) for r in bench_table], headers=list(bench_table[0]), tablefmt="github"), ""]
    atomic_write_text(os.path.join(args.report_dir, "gpu_check.md"), "\n".join(lines))
    print("\n".join(lines))
    sys.exit(0 if all(c["ok"] is not False for c in checks) else 1)


if __name__ == "__main__":
    main()
