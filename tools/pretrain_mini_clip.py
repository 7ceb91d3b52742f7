"""Pretrain the mini-CLIP: OpenAI's CLIP architecture, trained contrastively on the synthetic world.

    python tools/pretrain_mini_clip.py [--output assets/mini_clip.pt] [--steps N] [--seed S] ...

Every step draws a fresh batch of image-caption pairs (datasets/synthetic/world.py, pretraining
domain) and takes one AdamW step on CLIP's symmetric contrastive loss, with linear warm-up, cosine
decay and gradient clipping. A batch holds half as many classes as pairs, each twice: once in the
domain's ordinary look with an ordinary caption, once in one of the world's LOOKS (close-up,
blurry, noisy, faded, ...) with a caption that names it. Telling the two apart takes the look's
words, so the text encoder learns what they say about an image. The model is
``clip.model.CLIP`` itself, with the 77-token context and the full 49,408-token vocabulary of
CLIP's tokenizer, so the written file loads through ``MODEL.BACKBONE.PATH`` like any CLIP
checkpoint. It is saved in fp16 (a plain state dict).

Images go through the exact test-time pipeline of the configs (PIL bicubic resize to the
input size, CLIP's mean and std). The run is seeded: with the same arguments, the same
torch build and the same ``--threads``, it writes the same file, byte for byte.
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# torch, torchvision, the synthetic world (its package loads torch) and the model code are
# imported in the functions that use them, after the arguments are parsed: --help and a wrong
# flag answer before torch loads.

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the INPUT.PIXEL_MEAN/STD of every CLIP config
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ZERO_SHOT_TEMPLATE = "a photo of a {}."  # ZeroshotCLIP's template for datasets it does not know


def clip_transform(size):
    """The configs' test transform for an image already square: bicubic resize, tensor, normalise."""
    import dassl  # noqa: F401  (sets up torchvision before anything else)
    from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), ToTensor(),
                    Normalize(CLIP_MEAN, CLIP_STD)])


class PairStream:
    """An endless, seeded stream of (images, token ids) batches from the synthetic world."""

    def __init__(self, seed, batch_size, image_size, domain=None):
        import numpy as np
        from datasets.synthetic import world

        self.rng = np.random.default_rng(seed)
        self.batch_size = batch_size
        self.domain = world.PRETRAIN if domain is None else domain
        self.transform = clip_transform(image_size)
        self.classes = world.class_names()

    def next_classes(self):
        """``batch_size // 2`` distinct classes, drawn at random."""
        return [int(i) for i in self.rng.permutation(len(self.classes))[:self.batch_size // 2]]

    def next_pairs(self):
        """The next batch as (scene, caption) pairs: for each class, its ordinary scene, then its
        scene in a random look."""
        from datasets.synthetic import world

        pairs = []
        looks = list(world.LOOKS)
        for index in self.next_classes():
            colour, shape = world.parse_class_name(self.classes[index])
            for look in (None, looks[int(self.rng.integers(len(looks)))]):
                scene = world.render(self.rng, colour, shape, self.domain, look=look)
                pairs.append((scene, world.caption(self.rng, scene)))
        return pairs

    def __next__(self):
        import torch
        from datasets.synthetic import world
        from trainers.clip_prompting.loading import tokenize

        pairs = self.next_pairs()
        return (torch.stack([self.transform(world.to_pil(scene)) for scene, _ in pairs]),
                tokenize([caption for _, caption in pairs]))

    def __iter__(self):
        return self


class MiniClipTrainer:
    """The model, its two encoders (the project's shared forward), the optimiser and one step."""

    def __init__(self, args):
        import torch
        from trainers.clip_prompting.encoders import ImageEncoder, TextEncoder
        from trainers.clip_prompting.loading import build_clip

        torch.manual_seed(args.seed)
        self.model = build_clip(args.embed_dim, args.image_size, args.layers, args.width, args.patch_size,
                                transformer_width=args.width, transformer_layers=args.layers).train()
        self.text = TextEncoder(self.model)
        self.image = ImageEncoder(self.model)
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2 or "embedding" in n]
        self.optim = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                        {"params": no_decay, "weight_decay": 0.0}],
                                       lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
        self.args = args

    def lr_at(self, step):
        """Linear warm-up to --lr, then cosine decay to zero at --steps."""
        args = self.args
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.5 * args.lr * (1 + math.cos(math.pi * progress))

    def encode_text(self, ids):
        return self.text(self.model.token_embedding(ids), ids.argmax(dim=-1))

    def loss(self, images, ids):
        import torch
        import torch.nn.functional as F

        image_features = F.normalize(self.image(images), dim=-1)
        text_features = F.normalize(self.encode_text(ids), dim=-1)
        logits = self.model.logit_scale.exp().clamp(max=100) * image_features @ text_features.t()
        targets = torch.arange(len(images))
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2

    def step(self, step, images, ids):
        import torch

        for group in self.optim.param_groups:
            group["lr"] = self.lr_at(step)
        loss = self.loss(images, ids)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        self.optim.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return loss.item()


def evaluation_set(seed, per_class, image_size, domain):
    """``per_class`` images of every class in ``domain``: (images, labels)."""
    import numpy as np
    import torch
    from datasets.synthetic import world

    rng = np.random.default_rng(seed)
    transform = clip_transform(image_size)
    images, labels = [], []
    for label, name in enumerate(world.class_names()):
        colour, shape = world.parse_class_name(name)
        for _ in range(per_class):
            images.append(transform(world.to_pil(world.render(rng, colour, shape, domain))))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def zero_shot(trainer, images, labels, batch_size=128):
    """Accuracy (%) over the classes, and over colour and shape alone, with ZeroshotCLIP's template."""
    import torch
    import torch.nn.functional as F
    from datasets.synthetic import world
    from trainers.clip_prompting.loading import tokenize

    names = world.class_names()
    with torch.no_grad():
        text = F.normalize(trainer.encode_text(tokenize([ZERO_SHOT_TEMPLATE.format(n) for n in names])), dim=-1)
        predictions = torch.cat([(F.normalize(trainer.image(images[i:i + batch_size]), dim=-1) @ text.t()).argmax(1)
                                 for i in range(0, len(images), batch_size)])
    n_shapes = len(world.SHAPES)
    return {
        "class": 100.0 * (predictions == labels).float().mean().item(),
        "colour": 100.0 * (predictions // n_shapes == labels // n_shapes).float().mean().item(),
        "shape": 100.0 * (predictions % n_shapes == labels % n_shapes).float().mean().item(),
    }


def fp16_state_dict(model):
    """Every floating tensor in fp16 (the loader turns them back into fp32)."""
    return {k: (v.detach().half() if v.is_floating_point() else v.detach()).clone().contiguous()
            for k, v in model.state_dict().items()}


def pretrain(args, log=print):
    """Train as the arguments say; returns the trainer and the per-step losses."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from datasets.synthetic import world

    torch.set_num_threads(args.threads)
    trainer = MiniClipTrainer(args)
    stream = PairStream(args.seed, args.batch_size, args.image_size)
    eval_sets = {}
    if args.eval_every:
        for name in args.eval_domains:
            eval_sets[name] = evaluation_set(args.seed + 1, args.eval_per_class, args.image_size,
                                             world.DOMAINS[name])
    losses = []
    bar = tqdm(range(args.steps), desc="pretraining", disable=args.quiet, dynamic_ncols=True)
    for step in bar:
        images, ids = next(stream)
        losses.append(trainer.step(step, images, ids))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{trainer.lr_at(step):.1e}")
        if eval_sets and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            trainer.model.eval()
            for name, (images, labels) in eval_sets.items():
                acc = zero_shot(trainer, images, labels)
                log(f"step {step + 1}: zero-shot on {name}: class {acc['class']:.1f}%, colour "
                    f"{acc['colour']:.1f}%, shape {acc['shape']:.1f}% (mean loss of the last 50 steps "
                    f"{np.mean(losses[-50:]):.3f}; {time.process_time() / 60:.1f} CPU-min so far)")
            trainer.model.train()
    return trainer, losses


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="assets/mini_clip.pt", help="weights file to write (fp16 state dict)")
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200, help="steps of linear warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=12, help="layers in each tower")
    parser.add_argument("--width", type=int, default=64, help="width of both towers (multiple of 64)")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads; the same count gives the same weights")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="report zero-shot accuracy every N steps and at the end (0: never)")
    parser.add_argument("--eval-per-class", type=int, default=4)
    parser.add_argument("--eval-domains", nargs="+", metavar="DOMAIN",
                        help="domains of the synthetic world to evaluate on (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.width % 64:
        parser.error(f"--width {args.width} is not a multiple of 64 (CLIP uses width // 64 heads)")
    if args.image_size % args.patch_size:
        parser.error(f"--image-size {args.image_size} is not a multiple of --patch-size {args.patch_size}")
    if args.steps < 1 or args.batch_size < 2 or args.batch_size % 2 or args.batch_size > 128:
        parser.error("--steps must be at least 1 and --batch-size an even number from 2 to 128 "
                     "(pairs of images of up to 64 distinct classes)")
    import dassl  # noqa: F401  (sets up torchvision before anything else)
    from datasets.synthetic import world

    unknown = sorted(set(args.eval_domains or ()) - set(world.DOMAINS))
    if unknown:
        parser.error(f"--eval-domains: unknown {', '.join(unknown)}; choose from {', '.join(world.DOMAINS)}")
    args.eval_domains = args.eval_domains or list(world.DOMAINS)
    return args


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch

    from dassl.utils import atomic_write_bytes

    start = time.time()
    trainer, losses = pretrain(args)
    state = fp16_state_dict(trainer.model)
    atomic_write_bytes(args.output, lambda f: torch.save(state, f))
    print(f"Wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB) after {args.steps} steps in "
          f"{(time.time() - start) / 60:.1f} min; loss {np.mean(losses[:10]):.3f} (first 10 steps) -> "
          f"{np.mean(losses[-10:]):.3f} (last 10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
