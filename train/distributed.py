"""Multi-process training: the same command under ``torchrun --nproc_per_node=K``.

When ``WORLD_SIZE`` > 1 (set by torchrun), ``init_distributed`` joins the process
group (NCCL on CUDA, gloo on CPU) and the trainer wraps the model in
``DistributedDataParallel``. ``--batch-size`` is per process: a step trains on
``batch_size * world_size`` crops, rank ``r`` taking its own slice of the global
batch (``train.data.TrainSet.positions``). Rank 0 alone logs, validates and
writes checkpoints; at the end every rank hashes its weights and rank 0 checks
that all replicas are identical.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch

from engine.core.errors import ColorizerError

log = logging.getLogger(__name__)
T = TypeVar("T")


class DistributedError(ColorizerError):
    """The process group could not start, or another rank failed."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; anything else as given."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as e:
        raise ColorizerError(f"--device: {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ColorizerError(f"--device {requested}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(requested_device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Read torchrun's environment; join the process group when ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"cannot join the process group ({backend}, rank {rank}/{world}): {e}") from e
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def close(info: DistInfo, *, clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first waits for the others (a barrier), so no rank
    tears its connections down while a peer still uses them; after an error the barrier is skipped (the other
    ranks may never reach it)."""
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def run_on_main(info: DistInfo, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; other ranks wait and re-raise its ``ColorizerError`` (no hang)."""
    if not info.enabled:
        return fn()
    import torch.distributed as dist

    result: T | None = None
    message: list[Any] = [None]
    if info.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - tell the other ranks, then re-raise unchanged
            message[0] = str(e) if isinstance(e, ColorizerError) else f"rank 0 failed: {type(e).__name__}: {e}"
            dist.broadcast_object_list(message, src=0)
            raise
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise ColorizerError(message[0])
    return result


def all_reduce_mean(info: DistInfo, value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (NaN on any rank gives NaN everywhere, so all ranks skip the same steps)."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def broadcast_buffers(info: DistInfo, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if not info.enabled:
        return
    import torch.distributed as dist

    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def state_sha256(module: torch.nn.Module) -> str:
    """Hash of every parameter and persistent buffer, by name, bit-exact."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_replicas_identical(info: DistInfo, module: torch.nn.Module) -> str:
    """Every rank's ``state_sha256``; raises ``DistributedError`` if any differs. Returns the hash."""
    mine = state_sha256(module)
    if not info.enabled:
        return mine
    import torch.distributed as dist

    hashes: list[Any] = [None] * info.world_size
    dist.all_gather_object(hashes, mine)
    if len(set(hashes)) != 1:
        raise DistributedError(f"ranks ended with different weights: {hashes}")
    return mine
