"""Speed and memory of each trainer on three execution paths, measured in one run.

The model is CLIP with ViT-B/16's shapes and random weights (cost does not depend on weight
values). The paths (--paths, any of them, in the table's order):
- "off": the straightforward implementation: CLIP's own blocks over all 77 tokens, one text
  pass per image, text features recomputed per test batch, the text pass never chunked;
- "fast": the exact fast paths: attention through scaled_dot_product_attention, text sequences
  cut after the last EOT token, CoCoOp's per-image prompts in one batched text pass, text
  features computed once per evaluation; the text pass in one piece (MODEL.TEXT_CHUNK 0);
- "chunked": the project's default: the fast paths with MODEL.TEXT_CHUNK auto (a large text
  pass in chunks, recomputed in the backward pass, so step memory does not grow with classes).

Usage: python tools/benchmark.py [--trainers CoOp CoCoOp MuDPT ...] [--train-classes 50 1000]
                                 [--eval-classes 100 1000] [--paths off fast chunked] [--memory]
                                 [--memory-limit GIB] [--device cpu|cuda] [--tiny] [--json F]
Each figure is the median of --repeats timed runs after one warm-up; --memory adds the peak
memory one training step needs beyond the weights (CUDA allocator peak, or peak RSS on Linux).
On the CPU each memory probe runs in a fresh process that may grow by --memory-limit GiB: a
step that needs more is reported as "> N GiB" instead of being killed, and is not timed. With
--heap release (the default) the probe runs with glibc's mmap threshold fixed at 128 KiB
(MALLOC_MMAP_THRESHOLD_), so every large block a step frees goes back to the system at once and the
peak is what the step holds; --heap default keeps glibc's dynamic threshold, under which freed
blocks stay in the heap and the peak also counts memory the step freed and did not give back. The
ratio columns divide the first path's figure by each other path's (for images/s the other way
round): above 1, that path is faster or needs less memory.
"""
import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# torch and the model code are imported in the functions that use them, after the arguments are
# parsed: --help and a wrong flag answer before torch loads.

PATHS = ("off", "fast", "chunked")
HEAP_SETTING = ("MALLOC_MMAP_THRESHOLD_", "131072")  # --heap release: glibc returns freed blocks at once
PATH_HEADERS = {"off": "fast paths off", "fast": "fast paths on", "chunked": "chunked"}  # JSON keys too

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
    "MaPLe": ("trainers.maple", "MaPLeCLIP", ("MAPLE", {})),
}
WORDS = ["golden", "retriever", "sea", "lion", "air", "liner", "red", "maple", "tree", "sports", "car",
         "tabby", "cat", "garden", "spider", "steam", "engine", "paper", "towel", "bell", "pepper"]


def classnames(count):
    """Synthetic class names of 1-3 common words, like real benchmark class names."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + i % 3)) + f" {i}"
            for i in range(count)]


def load_runtime():
    """Import torch and the model code (after the arguments are parsed, so that --help and a wrong
    flag answer before torch loads; again in each spawned worker process)."""
    global torch, trainers, clip_prompting
    import dassl  # noqa: F401  (torchvision guard)
    import torch
    import trainers
    from trainers import clip_prompting


def build(name, num_classes, tiny, device, path):
    """The method's model on ``path``: "off", "fast" or "chunked" (see the module's docstring)."""
    import importlib
    module, cls, overrides = MODELS[name]
    node, keys = overrides
    cfg = trainers.build_cfg(node, **keys)
    clip_model = clip_prompting.tiny_clip() if tiny else clip_prompting.vit_b16_shaped_clip()
    model = getattr(importlib.import_module(module), cls)(cfg, classnames(num_classes), clip_model)
    clip_prompting.set_fast_paths(model, path != "off")
    clip_prompting.set_text_chunk(model, None if path == "chunked" else 0)
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


def measure_train(name, classes, path, args):
    """Seconds of one training step; None when it does not fit in memory."""
    device = torch.device(args.device)
    try:
        model = build(name, classes, args.tiny, device, path)
        return timed(train_step_fn(model, args.batch, device), device, args.repeats)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, MemoryError) or "memory" in str(exc).lower():
            return None
        raise


def measure_eval(name, classes, path, args):
    device = torch.device(args.device)
    model = build(name, classes, args.tiny, device, path)
    seconds = timed(eval_pass_fn(model, path != "off", args.eval_batches, args.eval_batch, device), device,
                    args.repeats)
    return args.eval_batches * args.eval_batch / seconds


def peak_memory_of_step(name, classes, path, args):
    """Memory (MiB) one training step adds at its peak over what was held before it (weights,
    inputs): the CUDA allocator's peak, or on CPU the peak resident memory (VmHWM, reset through
    /proc/self/clear_refs just before the step) of a fresh process, so that no memory freed by
    an earlier measurement is reused. None: the step does not fit in --memory-limit GiB."""
    if args.device != "cuda":
        context = mp.get_context("spawn")
        results = context.Queue()
        worker = context.Process(target=_cpu_step_peak, args=(name, classes, path, args, results))
        key, value = HEAP_SETTING
        inherited = os.environ.get(key)
        os.environ.pop(key, None)
        if args.heap == "release":
            os.environ[key] = value  # read by glibc when the spawned worker starts
        try:
            worker.start()
        finally:
            os.environ.pop(key, None)
            if inherited is not None:
                os.environ[key] = inherited
        worker.join()
        return results.get() if worker.exitcode == 0 else None  # out of memory, or killed for it
    device = torch.device("cuda")
    try:
        model = build(name, classes, args.tiny, device, path)
        step = train_step_fn(model, args.batch, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
    except torch.cuda.OutOfMemoryError:
        return None
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _cpu_step_peak(name, classes, path, args, results):
    """The spawned worker of ``peak_memory_of_step``: it may grow by --memory-limit GiB beyond its
    size at start; an allocation past that fails, and the worker exits with status 3."""
    import resource
    load_runtime()
    torch.set_num_threads(args.threads)
    limit = int((_proc_status_mib("VmSize") + args.memory_limit * 1024) * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        model = build(name, classes, args.tiny, torch.device("cpu"), path)
        step = train_step_fn(model, args.batch, torch.device("cpu"))
        before = _proc_status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter to the current RSS
        step()
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, MemoryError) or "memory" in str(exc).lower():
            sys.exit(3)
        raise
    results.put(_proc_status_mib("VmHWM") - before)


def _proc_status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}: peak memory on CPU needs Linux")


def ratio(value, reference):
    return f"{value / reference:.2f}x" if value is not None and reference is not None else "-"


def cell(value, digits, limit):
    return f"> {limit:g} GiB" if value is None else f"{value:.{digits}f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainers", nargs="+", default=["CoOp", "CoCoOp", "MuDPT"], choices=list(MODELS))
    p.add_argument("--train-classes", nargs="+", type=int, default=[50])
    p.add_argument("--eval-classes", nargs="*", type=int, default=[100])
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                   help="execution paths to measure, in this order (the first is the ratios' reference)")
    p.add_argument("--batch", type=int, default=4, help="training batch size")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--eval-batches", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="also measure peak memory of a train step")
    p.add_argument("--memory-limit", type=float, default=16.0,
                   help="GiB a CPU memory probe may use; a step that needs more is reported as not fitting")
    p.add_argument("--heap", choices=("release", "default"), default="release",
                   help="CPU memory probes: glibc returns freed blocks at once (release) or keeps them (default)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if torch sees a GPU, else cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own count)")
    p.add_argument("--tiny", action="store_true", help="tiny CLIP instead of ViT-B/16 shapes (smoke test)")
    p.add_argument("--json", help="also write the table (and the device) to this JSON file")
    args = p.parse_args(argv)
    load_runtime()
    from tabulate import tabulate

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    print(f"Model: {'tiny' if args.tiny else 'ViT-B/16-shaped'} CLIP, random weights; device: {device_name}; "
          f"torch {torch.__version__}")
    paths, limit, rows = args.paths, args.memory_limit, []

    def add(name, measure, values, digits, faster_is_smaller=True):
        """One row: the value of each path, then each path's ratio to the first one."""
        reference = values[0]
        ratios = [ratio(reference, v) if faster_is_smaller else ratio(v, reference) for v in values[1:]]
        rows.append([name, measure] + [cell(v, digits, limit) for v in values] + ratios)
        print(tabulate([rows[-1]], tablefmt="plain"), flush=True)

    for name in args.trainers:
        for classes in args.train_classes:
            # memory first: a step that does not fit is not timed (it would not fit here either)
            memory = [peak_memory_of_step(name, classes, path, args) for path in paths] if args.memory else None
            fits = memory or [True] * len(paths)
            add(name, f"train step, batch {args.batch}, {classes} classes (s)",
                [measure_train(name, classes, path, args) if fit is not None else None
                 for path, fit in zip(paths, fits)], 3)
            if args.memory:
                add(name, "peak memory added by that step (MiB)", memory, 0)
        for classes in args.eval_classes:
            add(name, f"evaluation, {classes} classes (images/s)",
                [measure_eval(name, classes, path, args) for path in paths], 2, faster_is_smaller=False)
    headers = ["trainer", "measure"] + [PATH_HEADERS[p] for p in paths] + [
        f"{PATH_HEADERS[p]} vs {paths[0]}" for p in paths[1:]]
    print()
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if args.json:
        from dassl.utils import write_json
        write_json({"device": device_name, "torch": torch.__version__,
                    "rows": [dict(zip(headers, row)) for row in rows]}, args.json)


if __name__ == "__main__":
    main()
