"""Write a small random CLIP of any family, loadable through MODEL.BACKBONE.PATH.

The default (``--family openai``) is OpenAI's architecture in a state-dict file: 224-px images,
12 layers in each tower, so the standard configs (ViT-B/16 prompt depths, 224-px transforms) run
on it unchanged. The other families are built by their own library and written in its own
layout, a folder: openclip (a native OpenCLIP model with LayerScale and quick GELU), siglip,
eva (EVA-02), pe (PE-Core) as OpenCLIP folders, hf as a transformers CLIP folder.
The last line printed is the MODEL.BACKBONE.NAME to use with it.

Usage: python tools/make_tiny_clip.py OUT [--family openai|openclip|siglip|eva|pe|hf]
       [--width 64] [--layers 12] [--patch-size 32] [--image-size 224] [--embed-dim 64] [--seed 0]
(the shape options apply to the openai family)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="file (openai) or folder (other families) to write")
    parser.add_argument("--family", default="openai", help="one of the families named above (default: openai)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--layers", type=int, default=12, help="layers in each tower")
    parser.add_argument("--width", type=int, default=64, help="width of both towers (multiple of 64)")
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # Imported once the arguments are parsed: --help and a wrong flag answer before torch loads.
    import torch

    from backbones.tiny_models import BACKBONE_NAMES, FAMILIES, write_tiny_model
    from dassl.utils import atomic_write_bytes
    from trainers.clip_prompting.loading import tiny_clip

    if args.family not in FAMILIES:
        parser.error(f"--family {args.family}: unknown family; choose one of {', '.join(FAMILIES)}")
    if args.family != "openai":
        name = write_tiny_model(args.output, args.family, args.seed)
        print(f"Wrote a random {args.family} CLIP (width 64, 12+12 layers, 224 px) to {args.output}; load it with "
              f"MODEL.BACKBONE.PATH {args.output}")
        print(f"MODEL.BACKBONE.NAME {name}")
        return
    if args.width % 64:
        parser.error(f"--width {args.width} is not a multiple of 64 (CLIP uses width // 64 heads)")
    if args.image_size % args.patch_size:
        parser.error(f"--image-size {args.image_size} is not a multiple of --patch-size {args.patch_size}")
    model = tiny_clip(args.image_size, args.layers, args.width, args.patch_size, args.embed_dim, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_write_bytes(args.output, lambda f: torch.save(model.state_dict(), f))
    params = sum(p.numel() for p in model.parameters())
    print(f"Wrote a random CLIP ({params:,} parameters, {args.image_size}px, {args.layers}+{args.layers} layers, "
          f"width {args.width}) to {args.output}")
    print(f"MODEL.BACKBONE.NAME {BACKBONE_NAMES['openai']}")


if __name__ == "__main__":
    main()
