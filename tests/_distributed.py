"""Helpers of the torch.distributed tests: spawning gloo process groups on 127.0.0.1, and the
model, data and training loop that every test runs both distributed and in one process.

Worker functions live here (not in the test module) so that spawned processes import them.
"""

import faulthandler
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from optim_db import DB, NAMES
from torch import nn

GLOBAL_BATCH = 16


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(function: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run ``function(rank, world_size, *args)`` in ``world_size`` processes of one gloo
    process group on 127.0.0.1; an exception in any of them fails the caller."""
    mp.spawn(_entry, args=(world_size, free_port(), function, args), nprocs=world_size)


def _entry(rank: int, world_size: int, port: int, function: Callable[..., None], args: Any) -> None:
    faulthandler.enable(all_threads=True)  # a crash shows every thread's Python stack
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    function(rank, world_size, *args)
    dist.barrier()  # tear down together
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: a worker has been seen to abort there now
    # and then ("terminate called without an active exception", 3 of about 60 runs, only
    # with Numba's OpenMP pool and gloo in one process). Results are on disk by now; a crash
    # during the work still fails the test, with every thread's stack from faulthandler.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def make_model(seed: int = 0) -> nn.Module:
    """64 -> 128 -> 8: the first weight (8,192 elements) is large enough for 8-bit state."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 8))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: the same in every process."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 64, generator=generator), torch.randn(
        GLOBAL_BATCH, 8, generator=generator
    )


def local_batch(step: int, rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's equal slice of the global batch: the mean of the ranks' mean losses is the
    global mean loss, so averaged gradients equal one process's full-batch gradients."""
    x, y = batch(step)
    size = GLOBAL_BATCH // world_size
    return x[rank * size : (rank + 1) * size], y[rank * size : (rank + 1) * size]


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: range,
    rank: int = 0,
    world_size: int = 1,
) -> None:
    for step in steps:
        x, y = local_batch(step, rank, world_size)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def optimizer_of(name: str, model: nn.Module, **options: Any) -> torch.optim.Optimizer:
    """Optimizer ``name`` on ``model`` with its distributed options (and ``options``)."""
    case = DB[name]
    return case.cls(model.parameters(), **{**case.distributed_options, **options})


def single_process(name: str, steps: int, **options: Any) -> dict[str, torch.Tensor]:
    """The parameters after ``steps`` steps of full-batch training in this process."""
    model = make_model()
    optimizer = optimizer_of(name, model, **options)
    train_steps(model, optimizer, range(steps))
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters as full tensors (gathering DTensor shards)."""
    state = {}
    for key, value in model.state_dict().items():
        value = value.full_tensor() if hasattr(value, "full_tensor") else value
        state[key] = value.detach().clone()
    return state


def ddp_worker(rank: int, world_size: int, out: Path, steps: int) -> None:
    """Every optimizer, fused kernel forced on, under DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    for name in NAMES:
        model = make_model()
        wrapped = DistributedDataParallel(model)
        optimizer = optimizer_of(name, model, fused=True)
        train_steps(wrapped, optimizer, range(steps), rank, world_size)
        if rank == 0:
            torch.save(full_state(model), out / f"ddp-{name}.pt")


def zero_worker(rank: int, world_size: int, out: Path, steps: int) -> None:
    """Every optimizer as ZeroRedundancyOptimizer's optimizer_class: train, consolidate the
    state on rank 0, save it, load it into a new ZeRO optimizer on every rank, train on."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    for name in NAMES:
        model = make_model()
        wrapped = DistributedDataParallel(model)
        cls, options = DB[name].cls, DB[name].distributed_options
        optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **options)
        train_steps(wrapped, optimizer, range(steps), rank, world_size)
        optimizer.consolidate_state_dict(to=0)
        path = out / f"zero-{name}-state.pt"
        if rank == 0:
            torch.save(optimizer.state_dict(), path)
        dist.barrier()
        resumed = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **options)
        resumed.load_state_dict(torch.load(path, weights_only=True))
        train_steps(wrapped, resumed, range(steps, 2 * steps), rank, world_size)
        if rank == 0:
            torch.save(full_state(model), out / f"zero-{name}.pt")


def fsdp_worker(rank: int, world_size: int, out: Path, steps: int, options: dict[str, Any]) -> None:
    """Every optimizer on an FSDP2 (fully_shard) model: parameters are DTensor shards."""
    from torch.distributed.fsdp import fully_shard

    for name in NAMES:
        model = make_model()
        for layer in (model[0], model[2]):
            fully_shard(layer)
        fully_shard(model)
        optimizer = optimizer_of(name, model, **options)
        train_steps(model, optimizer, range(steps), rank, world_size)
        weight = model[0].weight
        state = optimizer.state[weight]
        shards = {
            key: tuple(value.to_local().shape)
            for key, value in state.items()
            if hasattr(value, "to_local")
        }
        plain = {
            key: tuple(value.shape)
            for key, value in state.items()
            if not hasattr(value, "to_local")
        }
        summary = {"local": tuple(weight.to_local().shape), "dtensor": shards, "plain": plain}
        full = full_state(model)
        if rank == 0:
            torch.save({"params": full, "state": summary}, out / f"fsdp-{name}.pt")


def dcp_worker(
    rank: int,
    world_size: int,
    out: Path,
    load_from: str | None,
    save_to: str,
    steps: range,
    variants: dict[str, dict[str, Any]],
) -> None:
    """Train every optimizer with each of the option ``variants`` on an FSDP2 model of this
    world size over ``steps``, first loading model and optimizer from the distributed
    checkpoint ``load_from`` (if given), then saving both to ``save_to``: checkpoints move
    between world sizes. Files go to ``out / variant / name``."""
    for variant, options in variants.items():
        for name in NAMES:
            where = out / variant / name
            dcp_train(rank, world_size, where, name, load_from, save_to, steps, options)


def dcp_train(
    rank: int,
    world_size: int,
    out: Path,
    name: str,
    load_from: str | None,
    save_to: str,
    steps: range,
    options: dict[str, Any],
) -> None:
    """``dcp_worker`` for one optimizer, its checkpoints under ``out``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = optimizer_of(name, model, **options)
    if load_from is not None:
        state = {
            "model": get_model_state_dict(model),
            "optimizer": get_optimizer_state_dict(model, optimizer),
        }
        dcp.load(state, checkpoint_id=out / load_from)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    train_steps(model, optimizer, steps, rank, world_size)
    state = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    dcp.save(state, checkpoint_id=out / save_to)
    full = full_state(model)
    if rank == 0:
        torch.save(full, out / f"{save_to}.pt")
