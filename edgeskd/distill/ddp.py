"""Distributed data parallel, the torchrun way.

``edgeskd train`` is the same command alone or under ``torchrun --nproc-per-node N -m edgeskd
train ...``: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, and
``init_context`` joins the process group (NCCL on CUDA, gloo on CPU). Every rank trains on its
DistributedSampler shard and evaluates a strided shard of val/test; the logits are all-gathered so
every rank computes the same metrics (and picks the same best epoch); only rank 0 writes files.

Two things NCCL does not forgive: two ranks on one GPU (``resolve_device`` gives local rank k GPU k
and refuses a rank without a GPU of its own; a launcher can still show two ranks the same GPU —
``CUDA_VISIBLE_DEVICES=0 torchrun --nproc-per-node 2`` puts both on cuda:0 — so after joining,
``refuse_shared_gpus`` all-gathers every rank's (host, GPU UUID) over gloo and refuses duplicates in
one line, before NCCL's own "Duplicate GPU" error), and one rank leaving the loop alone — the others then
wait in DDP's gradient all-reduce until the NCCL timeout. A non-finite loss is therefore made known
to every rank (``nonfinite_ranks``, one all-reduce of a flag per step) so all stop at the same step.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from edgeskd.errors import BackendUnavailable, UsageError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None      # "gloo" / "nccl" when distributed
    owns_group: bool = False        # we initialised the process group (and destroy it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str, local_rank: int = 0) -> str:
    """'auto' | 'cpu' | 'cuda' → a torch device string; 'cuda' without CUDA is a one-line error.

    Local rank k gets GPU k. A rank beyond the visible GPUs is refused (NCCL rejects two ranks on
    one GPU), except where the launcher shows each rank exactly one GPU (CUDA_VISIBLE_DEVICES of
    one entry): then every rank uses its cuda:0."""
    import torch

    if pref == "cpu":
        return "cpu"
    has_cuda = torch.cuda.is_available()
    if pref.startswith("cuda") and not has_cuda:
        raise BackendUnavailable(f"--device {pref}: no CUDA device is visible to torch; use --device cpu or auto")
    if not has_cuda:
        return "cpu"
    n = torch.cuda.device_count()
    if pref.startswith("cuda:"):   # one chosen GPU: a single process (torchrun gives each rank its own)
        index = int(pref[5:])
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError(f"--device {pref} picks one GPU, but torchrun started several ranks (each takes "
                             "its own GPU); use --device cuda, or CUDA_VISIBLE_DEVICES to choose the GPUs")
        if index >= n:
            raise UsageError(f"--device {pref}: torch sees {n} GPU(s) (cuda:0..cuda:{n - 1})")
        return pref
    if local_rank < n:
        return f"cuda:{local_rank}"
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if n == 1 and len(visible) == 1:
        return "cuda:0"
    raise UsageError(
        f"local rank {local_rank} has no GPU of its own ({n} visible): NCCL needs one GPU per rank; "
        f"use torchrun --nproc-per-node {n} or fewer, or --device cpu (gloo)")


def init_context(device_pref: str = "auto") -> DistContext:
    """Read torchrun's environment; join (or reuse) the process group. Single process otherwise."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world <= 1:
        return DistContext(device=device)
    import torch.distributed as dist

    backend = process_group_backend(device)
    owns = False
    if not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        owns = True
    ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                      device=device, backend=backend, owns_group=owns)
    try:
        refuse_shared_gpus(ctx)
    except UsageError:
        cleanup(ctx)
        raise
    return ctx


def process_group_backend(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def gpu_uuid(device: str) -> str:
    """The UUID of the GPU behind torch device ``device`` (what NCCL tells GPUs apart by)."""
    import torch

    return str(torch.cuda.get_device_properties(torch.device(device)).uuid)


def refuse_shared_gpus(ctx: DistContext) -> None:
    """Every rank's (host, GPU UUID), all-gathered; two ranks on one GPU are a UsageError on every
    rank, in one line. Exchanged over gloo: an NCCL collective would itself fail on the duplicate."""
    if not ctx.distributed or not ctx.device.startswith("cuda"):
        return
    import torch.distributed as dist

    group = dist.new_group(backend="gloo") if ctx.backend == "nccl" and dist.is_gloo_available() else None
    seen: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(seen, (socket.gethostname(), gpu_uuid(ctx.device)), group=group)
    if group is not None:
        dist.destroy_process_group(group)
    first: dict[tuple[str, str], int] = {}
    for rank, key in enumerate(map(tuple, seen)):
        if key in first:
            host, uuid = key
            raise UsageError(
                f"ranks {first[key]} and {rank} share one GPU ({uuid} on {host}): NCCL needs one GPU per rank; "
                "show each rank its own GPU (CUDA_VISIBLE_DEVICES must list as many GPUs as --nproc-per-node) "
                "or use --device cpu (gloo)")
        first[key] = rank


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and ctx.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_gather_object(ctx: DistContext, obj: Any) -> list[Any]:
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(ctx: DistContext, values: dict[str, float]) -> dict[str, float]:
    """Mean of per-rank scalars (training-loss logging)."""
    if not ctx.distributed or not values:
        return values
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    t /= ctx.world_size
    return dict(zip(keys, t.tolist()))


def nonfinite_ranks(ctx: DistContext, loss: Any) -> list[int]:
    """Ranks whose ``loss`` is not finite this step — the same list on every rank (one all-reduce),
    so all ranks stop together instead of the healthy ones waiting in DDP's gradient all-reduce
    until the NCCL timeout. Call it every step before ``backward()``; raise when non-empty."""
    import torch

    bad = not bool(torch.isfinite(loss.detach()).all())
    if not ctx.distributed:
        return [ctx.rank] if bad else []
    import torch.distributed as dist

    flags = torch.zeros(ctx.world_size, dtype=torch.int32, device=ctx.device if ctx.backend == "nccl" else "cpu")
    flags[ctx.rank] = int(bad)
    dist.all_reduce(flags)
    return [r for r, f in enumerate(flags.tolist()) if f]


def shard_indices(n: int, ctx: DistContext):
    """Strided shard of range(n) for this rank (evaluation)."""
    import numpy as np

    return np.arange(ctx.rank, n, ctx.world_size)


def gather_rows(ctx: DistContext, rows, n: int):
    """Inverse of ``shard_indices``: every rank's (n_r, k) array → the full (n, k) array, in order."""
    import numpy as np

    parts = all_gather_object(ctx, rows)
    if len(parts) == 1:
        return parts[0]
    out = np.empty((n,) + parts[0].shape[1:], dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r::ctx.world_size] = p
    return out
