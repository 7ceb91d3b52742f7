"""Utilities with Dassl's names: registry, logging tee, seeding, files, checkpoints, meters."""
from .env import collect_env_info, set_deterministic, set_random_seed
from .logger import close_logger, console_stream, setup_logger
from .meters import AverageMeter, MetricMeter
from .registry import Registry
from .tools import (
    atomic_write_bytes, atomic_write_text, check_availability, check_isfile, closest_match,
    download_url, listdir_nohidden, mkdir_if_missing, read_image, read_json, tolist_if_not,
    write_json,
)
from .torchtools import (
    DEFAULT_CLASS_DEPENDENT_BUFFERS, count_num_param, count_trainable_param,
    describe_checkpoint_folder, load_checkpoint, load_pretrained_weights,
    load_trainable_state_dict, resume_from_checkpoint, save_checkpoint, trainable_state_dict,
)
