"""torchrun / DDP glue. Launch with `torchrun --nproc_per_node=N -m fastvit train ...`: torchrun sets
RANK, WORLD_SIZE, LOCAL_RANK; NCCL on GPUs, gloo on CPUs. Without torchrun: one process, no DDP.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastvit.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_arg: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
        device = torch.device("cuda", local_rank) if world_size > 1 else torch.device(device_arg)
        torch.cuda.set_device(device)
    elif device_arg == "cpu":
        device = torch.device("cpu")
    else:
        raise UserError(f"--device {device_arg!r} is not one of cpu, cuda, cuda:N, auto")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank), device


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t)
    return t


def broadcast_object(obj, d: Dist):
    """Rank 0's obj (picklable) on every rank: e.g. the speed choices, measured once, used by all."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
