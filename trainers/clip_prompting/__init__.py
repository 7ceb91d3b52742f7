"""CLIP machinery shared by every trainer: loading, prompt-aware encoders, class prompts."""
from .encoders import (ImageEncoder, TextEncoder, deep_prompt_hook, run_blocks, set_fast_paths, set_text_chunk,
                       splice)
from .loading import load_clip, tiny_clip, tokenize, vit_b16_shaped_clip
from .lora import AttentionLoRA, EncoderLoRA, LowRankUpdate
from .model import DeepPromptedCLIP, PromptedCLIP
from .prompts import ClassPrompts, clean_classname, init_context, template_text_features
from .trainer import PromptTuningTrainer
