"""One run on several processes (``torchrun --nproc_per_node N train.py ...``).

The design keeps a distributed run equal to the one-process run of the same command:
- every rank builds the same data loaders from the same seeded global RNG, so every rank sees
  the one-process batch of each step and keeps its own contiguous slice (``shard_batch``); the
  union of the slices is exactly the one-process batch, augmentations included;
- gradients are averaged with one all-reduce per step, weighted by slice size, so the update is
  the one-process update for every loss that is a mean over independent samples;
- RNG states and initial parameters are made identical across ranks after set-up, so cache
  hits or misses on one rank cannot make the ranks drift apart;
- evaluation is split into contiguous shards and gathered in order, each image counted once.

Without torchrun (no WORLD_SIZE > 1 in the environment) every function here is a no-op.
"""
import os

import torch
import torch.distributed as dist

from .errors import UserInputError

__all__ = [
    "init_distributed", "is_distributed", "get_rank", "get_world_size", "is_main_process",
    "shard_range", "shard_batch", "all_reduce_gradients", "all_reduce_mean", "all_reduce_flag",
    "gather_in_rank_order", "broadcast_object", "broadcast_parameters", "barrier",
    "check_distributed_batch", "shard_for_evaluation",
]


def init_distributed(use_cuda=True):
    """Join the process group torchrun describes in the environment; returns the world size.

    Backend nccl on CUDA (one GPU per rank, the LOCAL_RANK-th), gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or dist.is_initialized():
        return get_world_size()
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world_size


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return get_rank() == 0


def _collective_device():
    """nccl reduces CUDA tensors only; gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier():
    if is_distributed():
        dist.barrier()


def shard_range(n, rank=None, world_size=None):
    """The contiguous [start, end) slice of ``n`` items that ``rank`` handles."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_batch(batch):
    """This rank's slice of a batch dict (tensors and lists along dim 0); returns (slice, its
    fraction of the whole batch)."""
    if not is_distributed():
        return batch, 1.0
    size = len(batch["label"]) if "label" in batch else len(next(iter(batch.values())))
    start, end = shard_range(size)

    def cut(value):
        if isinstance(value, (torch.Tensor, list, tuple)) and len(value) == size:
            return value[start:end]
        if isinstance(value, list):  # K augmented views: a list of batch tensors
            return [cut(v) for v in value]
        return value

    return {key: cut(value) for key, value in batch.items()}, (end - start) / size


def all_reduce_gradients(parameters, weight):
    """grad <- sum over ranks of weight_r * grad_r, in one flat all-reduce (the weights, each
    rank's share of the batch, sum to 1, so this is the one-process mean-loss gradient)."""
    if not is_distributed():
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads]) * weight
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def all_reduce_mean(values, weight):
    """Weighted mean over ranks of a dict of floats (the printed losses of a step)."""
    if not is_distributed():
        return values
    keys = list(values)
    tensor = torch.tensor([float(values[k]) * weight for k in keys], dtype=torch.float64,
                          device=_collective_device())
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def all_reduce_flag(flag):
    """True on every rank when any rank passes True (e.g. a stop signal seen by one rank)."""
    if not is_distributed():
        return bool(flag)
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_in_rank_order(obj):
    """[rank 0's obj, rank 1's obj, ...] on every rank (CPU objects)."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def broadcast_parameters(parameters):
    """Copy rank 0's values of ``parameters`` to every rank."""
    if not is_distributed():
        return
    for p in parameters:
        dist.broadcast(p.data, src=0)


def check_distributed_batch(cfg):
    world = get_world_size()
    batch = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
    if batch % world:
        raise UserInputError(
            f"DATALOADER.TRAIN_X.BATCH_SIZE is {batch}, the global batch of the run, but it does not "
            f"divide among {world} processes; use a multiple of {world} (each process takes batch/{world}).")


def shard_for_evaluation(loader):
    """This process's contiguous shard of an evaluation loader (the loader itself in one process)."""
    if not is_distributed():
        return loader
    start, end = shard_range(len(loader.dataset))
    subset = torch.utils.data.Subset(loader.dataset, range(start, end))
    return torch.utils.data.DataLoader(subset, batch_size=loader.batch_size, shuffle=False,
                                       num_workers=loader.num_workers, pin_memory=loader.pin_memory)
