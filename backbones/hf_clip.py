"""Hugging Face ``transformers`` CLIP checkpoints, mapped onto OpenAI's layout (same architecture).

A local folder with ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``), e.g. a
downloaded ``openai/clip-vit-base-patch16`` or a fine-tune of it, is the OpenAI CLIP architecture
with other parameter names: q, k and v are separate Linears, projections are stored transposed.
Its tensors are renamed onto ``clip.model.CLIP`` and run by the OpenAI adapter, exactly.
"""
import json
import os

import torch

from .interface import Preprocessing
from .openai import ClipWeightsError, ClipWeightsNotFound, OpenAIBackbone, clip_from_state_dict, vision_architecture

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# transformers name (inside a layer) -> OpenAI name
LAYER_NAMES = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}


def read_folder(folder):
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise ClipWeightsNotFound(f'"{folder}" has no config.json: a Hugging Face CLIP folder holds config.json and '
                                  "model.safetensors (e.g. a download of openai/clip-vit-base-patch16).")
    with open(config_file) as handle:
        config = json.load(handle)
    if config.get("model_type") != "clip":
        raise ClipWeightsError(f'"{config_file}" describes a "{config.get("model_type")}" model; only CLIP '
                               '(model_type "clip") checkpoints map onto the OpenAI layout. For SigLIP or '
                               "EVA-CLIP, use an OpenCLIP name (openclip:ViT-B-16-SigLIP, openclip:EVA02-B-16).")
    weights = next((os.path.join(folder, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(folder, f))), None)
    if weights is None:
        raise ClipWeightsNotFound(f'"{folder}" has config.json but no weights: looked for {" or ".join(WEIGHT_FILES)}.')
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(weights)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    return config, state


def check_config(config, folder):
    text, vision = config.get("text_config", {}), config.get("vision_config", {})
    problems = []
    for part, name in ((text, "text"), (vision, "vision")):
        if part.get("hidden_act", "quick_gelu") != "quick_gelu":
            problems.append(f'{name} activation "{part.get("hidden_act")}" (OpenAI CLIP uses quick_gelu)')
        width, heads = part.get("hidden_size", 512 if name == "text" else 768), part.get("num_attention_heads")
        if heads is not None and heads != width // 64:
            problems.append(f"{name} heads {heads} for width {width} (OpenAI CLIP has width // 64)")
    if text.get("vocab_size", 49408) != 49408 or text.get("max_position_embeddings", 77) != 77:
        problems.append("a text vocabulary or context other than OpenAI's 49,408 tokens and 77 positions")
    if problems:
        raise ClipWeightsError(f'The CLIP in "{folder}" is not OpenAI\'s architecture ({"; ".join(problems)}), so it '
                               "cannot run on the OpenAI layout.")


def openai_state_dict(state):
    """transformers CLIPModel tensors renamed (and q, k, v joined) onto clip.model.CLIP."""
    out = {"logit_scale": state["logit_scale"],
           "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": state["text_model.final_layer_norm.weight"],
           "ln_final.bias": state["text_model.final_layer_norm.bias"],
           "text_projection": state["text_projection.weight"].t().contiguous(),
           "visual.class_embedding": state["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": state["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": state["vision_model.embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": state["vision_model.pre_layrnorm.weight"],
           "visual.ln_pre.bias": state["vision_model.pre_layrnorm.bias"],
           "visual.ln_post.weight": state["vision_model.post_layernorm.weight"],
           "visual.ln_post.bias": state["vision_model.post_layernorm.bias"],
           "visual.proj": state["visual_projection.weight"].t().contiguous()}
    for tower, target in (("text_model", ""), ("vision_model", "visual.")):
        prefix = f"{tower}.encoder.layers."
        layers = sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)})
        for i in layers:
            source, block = f"{prefix}{i}.", f"{target}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[f"{block}attn.in_proj_{kind}"] = torch.cat(
                    [state[f"{source}self_attn.{p}_proj.{kind}"] for p in "qkv"])
                for name, ours in LAYER_NAMES.items():
                    out[f"{block}{ours}.{kind}"] = state[f"{source}{name}.{kind}"]
    return out


def preprocessing_of(folder, size):
    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.isfile(path):
        return Preprocessing(size=size)
    with open(path) as handle:
        config = json.load(handle)
    return Preprocessing(size=size, mean=tuple(config.get("image_mean", Preprocessing.mean)),
                         std=tuple(config.get("image_std", Preprocessing.std)))


def load_hf_clip(label, path=""):
    """The CLIP in a transformers folder: PATH, or the folder the name itself gives (``hf:/path``)."""
    folder = os.path.expanduser(path or label)
    if not os.path.isdir(folder):
        raise ClipWeightsNotFound(f'A Hugging Face CLIP loads from a local folder, but "{folder}" is not one: set '
                                  "MODEL.BACKBONE.PATH to the folder with config.json and model.safetensors.")
    config, state = read_folder(folder)
    check_config(config, folder)
    try:
        mapped = openai_state_dict(state)
    except KeyError as exc:
        raise ClipWeightsError(f'"{folder}" holds a CLIP config but its weights lack {exc}: not a complete '
                               "transformers CLIPModel checkpoint.") from exc
    model = clip_from_state_dict(mapped, folder)
    backbone = OpenAIBackbone(model, family="hf")
    backbone.preprocessing = preprocessing_of(folder, model.visual.input_resolution)
    print(f"CLIP architecture: {vision_architecture(model.visual)} (Hugging Face checkpoint)")
    return backbone
