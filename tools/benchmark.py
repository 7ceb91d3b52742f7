"""Speed and memory of each trainer with the exact fast paths on and off, measured in one run.

The model is CLIP with ViT-B/16's shapes and random weights (cost does not depend on weight
values). "fast" is the project's default: attention through scaled_dot_product_attention, text
sequences cut after the last EOT token, CoCoOp's per-image prompts in one batched text pass, and
text features computed once per evaluation. "off" is the straightforward implementation: CLIP's
own blocks over all 77 tokens, one text pass per image, text features recomputed per test batch.

Usage: python tools/benchmark.py [--trainers CoOp CoCoOp MuDPT ...] [--train-classes 50 1000]
                                 [--eval-classes 100 1000] [--device cpu|cuda] [--tiny]
Each figure is the median of --repeats timed runs after one warm-up; --memory adds the peak
memory one training step needs beyond the weights (CUDA allocator peak, or peak RSS on Linux).
"""
import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dassl  # noqa: E402,F401  (torchvision guard)
import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

import trainers  # noqa: E402
from trainers.clip_prompting import set_fast_paths, tiny_clip, vit_b16_shaped_clip  # noqa: E402

# Trainer name -> (module, model class, (config node, overrides as in its paper config))
MODELS = {
    "CoOp": ("trainers.coop", "CoOpCLIP", ("COOP", {"N_CTX": 16})),
    "CoCoOp": ("trainers.cocoop", "CoCoOpCLIP", ("COCOOP", {"N_CTX": 4, "CTX_INIT": "a photo of a"})),
    "MuDPT": ("trainers.mudpt", "MuDPTCLIP", ("MUDPT", {})),
    "KgCoOp": ("trainers.kgcoop", "KgCoOpCLIP", ("KGCOOP", {})),
    "PromptSRC": ("trainers.promptsrc", "PromptSRCCLIP", ("PROMPTSRC", {})),
    "MMA": ("trainers.mma", "MMACLIP", ("MMA", {})),
    # no LoRA dropout: the "off" path merges LoRA into the weights, which cannot express it
    "CLIPLoRA": ("trainers.cliplora", "CLIPLoRACLIP", ("CLIPLORA", {"DROPOUT_RATE": 0.0})),
}
WORDS = ["golden", "retriever", "sea", "lion", "air", "liner", "red", "maple", "tree", "sports", "car",
         "tabby", "cat", "garden", "spider", "steam", "engine", "paper", "towel", "bell", "pepper"]


def classnames(count):
    """Synthetic class names of 1-3 common words, like real benchmark class names."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + i % 3)) + f" {i}"
            for i in range(count)]


def build(name, num_classes, tiny, device):
    import importlib
    module, cls, overrides = MODELS[name]
    node, keys = overrides
    cfg = trainers.build_cfg(node, **keys)
    clip_model = tiny_clip() if tiny else vit_b16_shaped_clip()
    model = getattr(importlib.import_module(module), cls)(cfg, classnames(num_classes), clip_model)
    return model.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_fn(model, batch, device):
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.arange(batch, device=device) % 2
    optim = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step():
        optim.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optim.step()
    return step


def eval_pass_fn(model, fast, batches, batch, device):
    """One evaluation pass over ``batches`` test batches; the text state computed once when fast."""
    images = torch.randn(batch, 3, 224, 224, device=device)
    model.eval()

    @torch.no_grad()
    def run():
        cached = model.text_state() if fast and not model.text_depends_on_image else None
        for _ in range(batches):
            model(images, text_state=cached)
    return run


def measure_train(name, classes, fast, args):
    device = torch.device(args.device)
    model = build(name, classes, args.tiny, device)
    set_fast_paths(model, fast)
    return timed(train_step_fn(model, args.batch, device), device, args.repeats)


def measure_eval(name, classes, fast, args):
    device = torch.device(args.device)
    model = build(name, classes, args.tiny, device)
    set_fast_paths(model, fast)
    seconds = timed(eval_pass_fn(model, fast, args.eval_batches, args.eval_batch, device), device, args.repeats)
    return args.eval_batches * args.eval_batch / seconds


def peak_memory_of_step(name, classes, fast, args):
    """Memory (MiB) one training step adds at its peak over what was held before it (weights,
    inputs): the CUDA allocator's peak, or on CPU the peak resident memory (VmHWM, reset through
    /proc/self/clear_refs just before the step) of a fresh process, so that no memory freed by
    an earlier measurement is reused."""
    if args.device != "cuda":
        with mp.get_context("spawn").Pool(1) as pool:
            return pool.apply(_cpu_step_peak, (name, classes, fast, args))
    device = torch.device("cuda")
    model = build(name, classes, args.tiny, device)
    set_fast_paths(model, fast)
    step = train_step_fn(model, args.batch, device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _cpu_step_peak(name, classes, fast, args):
    torch.set_num_threads(args.threads)
    model = build(name, classes, args.tiny, torch.device("cpu"))
    set_fast_paths(model, fast)
    step = train_step_fn(model, args.batch, torch.device("cpu"))
    before = _proc_status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter to the current RSS
    step()
    return _proc_status_mib("VmHWM") - before


def _proc_status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}: peak memory on CPU needs Linux")


def ratio(slow, fast):
    return f"{slow / fast:.2f}x"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainers", nargs="+", default=["CoOp", "CoCoOp", "MuDPT"], choices=list(MODELS))
    p.add_argument("--train-classes", nargs="+", type=int, default=[50])
    p.add_argument("--eval-classes", nargs="+", type=int, default=[100])
    p.add_argument("--batch", type=int, default=4, help="training batch size")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--eval-batches", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="also measure peak memory of a train step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tiny", action="store_true", help="tiny CLIP instead of ViT-B/16 shapes (smoke test)")
    p.add_argument("--json", help="also write the table (and the device) to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    print(f"Model: {'tiny' if args.tiny else 'ViT-B/16-shaped'} CLIP, random weights; device: {device_name}; "
          f"torch {torch.__version__}")
    rows = []
    for name in args.trainers:
        for classes in args.train_classes:
            off = measure_train(name, classes, False, args)
            fast = measure_train(name, classes, True, args)
            rows.append([name, f"train step, batch {args.batch}, {classes} classes (s)",
                         f"{off:.3f}", f"{fast:.3f}", ratio(off, fast)])
            print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
            if args.memory:
                off_mem = peak_memory_of_step(name, classes, False, args)
                fast_mem = peak_memory_of_step(name, classes, True, args)
                rows.append([name, "peak memory added by that step (MiB)", f"{off_mem:.0f}", f"{fast_mem:.0f}",
                             ratio(off_mem, fast_mem)])
                print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
        for classes in args.eval_classes:
            off = measure_eval(name, classes, False, args)
            fast = measure_eval(name, classes, True, args)
            rows.append([name, f"evaluation, {classes} classes (images/s)", f"{off:.2f}", f"{fast:.2f}",
                         ratio(fast, off)])
            print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    headers = ["trainer", "measure", "fast paths off", "fast paths on", "speed-up"]
    print()
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if args.json:
        from dassl.utils import write_json
        write_json({"device": device_name, "torch": torch.__version__,
                    "rows": [dict(zip(headers, row)) for row in rows]}, args.json)


if __name__ == "__main__":
    main()
