"""Write a small random CLIP with the real architecture, loadable through MODEL.BACKBONE.PATH.

The default takes 224-px images and has 12 layers in each tower, so the standard
configs (ViT-B/16 prompt depths, 224-px transforms) run on it unchanged.
Usage: python tools/make_tiny_clip.py OUT.pt [--width 64] [--layers 12] [--patch-size 32]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from trainers.clip_prompting.loading import tiny_clip  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="file to write (a state dict)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--layers", type=int, default=12, help="layers in each tower")
    parser.add_argument("--width", type=int, default=64, help="width of both towers (multiple of 64)")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.width % 64:
        parser.error(f"--width {args.width} is not a multiple of 64 (CLIP uses width // 64 heads)")
    if args.image_size % args.patch_size:
        parser.error(f"--image-size {args.image_size} is not a multiple of --patch-size {args.patch_size}")
    model = tiny_clip(args.image_size, args.layers, args.width, args.patch_size, args.embed_dim, args.seed)
    directory = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{args.output}.tmp-{os.getpid()}"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, args.output)
    params = sum(p.numel() for p in model.parameters())
    print(f"Wrote a random CLIP ({params:,} parameters, {args.image_size}px, {args.layers}+{args.layers} layers, "
          f"width {args.width}) to {args.output}")


if __name__ == "__main__":
    main()
