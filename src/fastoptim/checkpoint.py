"""Checkpoints: ``state_dict`` and ``load_state_dict`` in torch.optim's layout, keyed by position
or by parameter name, loaded atomically (checked whole first, put back on failure), with
compact state converted to and from each group's format.
"""

import os
import pickle
import zipfile
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fastoptim.kernels.formats import QBLOCK
from fastoptim.options import option_hints
from fastoptim.state import ABSMAX, CODES, DTensor, convert_buffer, scalars, stored_names

if TYPE_CHECKING:
    from fastoptim.optimizer import BaseOptimizer

# The key that marks a state dict keyed by parameter names (``state_dict(named=True)``).
NAMED = "keyed_by_name"

# How state is kept belongs to the optimizer, not to the checkpoint it loads.
STATE_LAYOUT_OPTIONS = ("state_dtype", "stochastic_rounding")

# What load_state_dict puts back when loading fails part way.
RESTORED_ON_FAILURE = (
    "state",
    "param_groups",
    "_rounding_seed",
    "_rounding_steps",
    "skipped_steps",
)


def check_state_dict_structure(state_dict: Any) -> None:
    """TypeError or ValueError unless ``state_dict`` has an optimizer state dict's shape: a
    dict with a dict ``state`` and a list ``param_groups`` of dicts with ``params``."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"a state dict must be a dict, got {type(state_dict).__name__}")
    missing = [key for key in ("state", "param_groups") if key not in state_dict]
    if missing:
        raise ValueError(
            f"not an optimizer state dict: it lacks {missing} (it has {sorted(state_dict)[:8]})"
        )
    groups = state_dict["param_groups"]
    if not isinstance(state_dict["state"], dict) or not isinstance(groups, list):
        raise TypeError("a state dict's 'state' must be a dict and 'param_groups' a list")
    for index, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise ValueError(f"param group {index} of the state dict has no 'params' list")
    if not all(isinstance(value, dict) for value in state_dict["state"].values()):
        raise TypeError("a state dict's 'state' must map parameters to dicts")


def read_checkpoint(path: "str | os.PathLike[str]") -> dict[str, Any]:
    """The state dict saved in the file ``path`` (torch.save), read with weights_only=True;
    ValueError saying so when the file is truncated or corrupt."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"cannot read the optimizer checkpoint {os.fspath(path)!r}: the file is truncated, "
            f"corrupt or not a torch.save file ({type(error).__name__}: {error})"
        ) from error


def state_dict_of(optimizer: "BaseOptimizer", named: bool) -> dict[str, Any]:
    """``optimizer.state_dict(named)``: torch.optim's, plus the optimizer's name, its
    stochastic-rounding position and skipped steps; keyed by parameter names if ``named``."""
    state_dict = torch.optim.Optimizer.state_dict(optimizer)
    state_dict["rounding"] = {"seed": optimizer._rounding_seed, "steps": optimizer._rounding_steps}
    state_dict["optimizer"] = type(optimizer).__name__
    state_dict["skipped_steps"] = optimizer.skipped_steps
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param_state in state_dict["state"].items():
        if DTensor is not None and isinstance(params[index], DTensor):
            # 8-bit state of a shard: its block scales belong to this process's shard
            # only. Saved dequantized (float32, sharded like the parameter) so that
            # torch.distributed.checkpoint can reshard it; loading quantizes again.
            state_dict["state"][index] = param_state = dict(param_state)
            for key in [k[: -len(CODES)] for k in param_state if str(k).endswith(CODES)]:
                convert_buffer(param_state, key, torch.float32, signed=True)
    if not named:
        return state_dict
    names = param_names(optimizer)
    groups = [
        {**group, "params": [names[index] for index in group["params"]]}
        for group in state_dict["param_groups"]
    ]
    state = {names[index]: value for index, value in state_dict["state"].items()}
    return {**state_dict, "state": state, "param_groups": groups, NAMED: True}


def param_names(optimizer: "BaseOptimizer") -> list[str]:
    """Every parameter's name, in state_dict position order; ValueError if unnamed."""
    if not all("param_names" in group for group in optimizer.param_groups):
        raise ValueError(
            "state_dict(named=True) needs parameter names: build the optimizer from "
            "model.named_parameters() or with fastoptim.create_optimizer(model, ...)"
        )
    return [name for group in optimizer.param_groups for name in group["param_names"]]


def positional(optimizer: "BaseOptimizer", state_dict: dict[str, Any]) -> dict[str, Any]:
    """A ``state_dict(named=True)`` as the positional state dict of the optimizer's current
    parameter order; ValueError listing missing and unexpected names, or names in another
    group, before anything changes."""
    names = param_names(optimizer)
    saved_groups = state_dict["param_groups"]
    saved = [name for group in saved_groups for name in group["params"]]
    missing = [name for name in names if name not in set(saved)]
    unexpected = [name for name in saved if name not in set(names)]
    if missing or unexpected or len(saved) != len(set(saved)):
        raise ValueError(
            "loaded named state dict does not match the optimizer's parameters: "
            f"missing {missing}, unexpected {unexpected}"
        )
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"loaded named state dict has {len(saved_groups)} parameter groups, "
            f"the optimizer {len(optimizer.param_groups)}"
        )
    position = {name: index for index, name in enumerate(names)}
    groups = []
    for index, (group, saved_group) in enumerate(
        zip(optimizer.param_groups, saved_groups, strict=True)
    ):
        only_here = sorted(set(group["param_names"]) - set(saved_group["params"]))
        only_there = sorted(set(saved_group["params"]) - set(group["param_names"]))
        if only_here or only_there:
            raise ValueError(
                f"parameter group {index} differs from the loaded named state dict's: "
                f"{only_here} only here, {only_there} only there"
            )
        # Each group lists its parameters in this optimizer's order.
        ordered = list(group["param_names"])
        groups.append(
            {**saved_group, "params": [position[n] for n in ordered], "param_names": ordered}
        )
    state = {position[name]: value for name, value in state_dict["state"].items()}
    rest = {k: v for k, v in state_dict.items() if k != NAMED}
    return {**rest, "state": state, "param_groups": groups}


def load_state_dict_into(
    optimizer: "BaseOptimizer", state_dict: "dict[str, Any] | str | os.PathLike[str]"
) -> None:
    """``optimizer.load_state_dict(state_dict)``: checked whole first, then loaded; on any
    failure the optimizer is put back exactly as it was."""
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_checkpoint(state_dict)
    check_state_dict_structure(state_dict)
    # Only our own marker: torch.distributed.checkpoint passes name-keyed dicts that it
    # has put in this optimizer's order, to be loaded by position.
    if state_dict.get(NAMED):
        state_dict = positional(optimizer, state_dict)
    check_state_dict(optimizer, state_dict)
    before = {key: optimizer.__dict__[key] for key in RESTORED_ON_FAILURE}
    try:
        load_checked_state_dict(optimizer, state_dict)
    except BaseException:
        optimizer.__dict__.update(before)
        optimizer._forget_layouts()
        raise


def other_optimizers_options(optimizer: "BaseOptimizer") -> set[str]:
    """Options of fastoptim's other optimizers that ``optimizer`` does not have: one of them
    in a saved group shows a state dict of another optimizer."""
    from fastoptim.optimizer import BaseOptimizer

    ours = set(option_hints(type(optimizer))) | set(optimizer.defaults)
    found, pending = set(), list(BaseOptimizer.__subclasses__())
    while pending:
        cls = pending.pop()
        found |= set(option_hints(cls))
        pending.extend(cls.__subclasses__())
    return found - ours


def check_state_dict(optimizer: "BaseOptimizer", state_dict: dict[str, Any]) -> None:
    """ValueError saying what differs if ``state_dict`` (positional) cannot be the
    optimizer's: another optimizer, other group or parameter counts, state entries it does not
    declare, or state tensors of another shape."""
    name = type(optimizer).__name__
    kind = state_dict.get("optimizer")
    if kind is not None and kind != name:
        raise ValueError(f"the state dict is of {kind}, not of {name}")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"the state dict has {len(saved_groups)} param groups, {name} has "
            f"{len(optimizer.param_groups)}"
        )
    foreign = other_optimizers_options(optimizer)
    params = {}
    for index, (group, saved) in enumerate(zip(optimizer.param_groups, saved_groups, strict=True)):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"param group {index} of the state dict has {len(saved['params'])} "
                f"parameters, {name}'s has {len(group['params'])}"
            )
        others = sorted(foreign & set(saved))
        if others:
            raise ValueError(
                f"param group {index} of the state dict has options {others} that {name} "
                "does not have: a state dict of another optimizer?"
            )
        params.update(zip(saved["params"], group["params"], strict=True))
    declared = optimizer.declared_state
    allowed = stored_names(declared)
    scalar_names = {item.name for item in scalars(declared)}
    for param_id, param_state in state_dict["state"].items():
        if param_id not in params:
            raise ValueError(f"the state dict has state for an unknown parameter {param_id!r}")
        param = params[param_id]
        unknown = sorted(set(map(str, param_state)) - allowed)
        if unknown:
            raise ValueError(
                f"the state of parameter {param_id} has {unknown}, which {name} does not "
                f"keep (its state: {', '.join(sorted(allowed))}): a state dict of "
                "another optimizer?"
            )
        for key, value in param_state.items():
            expected = expected_shape(param, str(key), scalar_names)
            if isinstance(value, Tensor) and expected is not None and value.shape != expected:
                raise ValueError(
                    f"the state {key!r} of parameter {param_id} has shape "
                    f"{tuple(value.shape)}, {name} expects {tuple(expected)} for its "
                    f"parameter of shape {tuple(param.shape)}"
                )


def expected_shape(param: Tensor, key: str, scalar_names: set[str]) -> torch.Size | None:
    """The shape a state tensor ``key`` of ``param`` must have (None: any one-element
    tensor or number, for scalars; any, for a shard's scales)."""
    if key in scalar_names:
        return None
    if key.endswith(ABSMAX):
        if DTensor is not None and isinstance(param, DTensor):
            return None  # a shard's scales cover its local elements only
        return torch.Size(((param.numel() + QBLOCK - 1) // QBLOCK,))
    return param.shape


def load_checked_state_dict(optimizer: "BaseOptimizer", state_dict: dict[str, Any]) -> None:
    """``load_state_dict`` after the checks."""
    compact_keys = (CODES, ABSMAX)
    saved = state_dict["state"]
    compact = {
        param_id: {k: v for k, v in s.items() if str(k).endswith(compact_keys)}
        for param_id, s in saved.items()
    }
    if any(compact.values()):
        # torch.optim casts floating state to each parameter's dtype: codes and scales
        # stay out of that and are put back after.
        stripped = {
            param_id: {k: v for k, v in s.items() if k not in compact.get(param_id, {})}
            for param_id, s in saved.items()
        }
        state_dict = {**state_dict, "state": stripped}
    layouts = [{key: g[key] for key in STATE_LAYOUT_OPTIONS} for g in optimizer.param_groups]
    torch.optim.Optimizer.load_state_dict(optimizer, state_dict)
    for group, layout in zip(optimizer.param_groups, layouts, strict=True):
        group.update(layout)
    saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = chain.from_iterable(g["params"] for g in optimizer.param_groups)
    for param_id, param in zip(saved_ids, params, strict=True):
        entries = compact.get(param_id)
        if entries:
            optimizer.state[param].update({k: v.to(param.device) for k, v in entries.items()})
    for group in optimizer.param_groups:
        for param in group["params"]:
            if optimizer.state.get(param):
                optimizer._convert_state(param, group, optimizer.state[param])
    rounding = state_dict.get("rounding")
    if rounding is not None:
        optimizer._rounding_seed, optimizer._rounding_steps = rounding["seed"], rounding["steps"]
    optimizer.skipped_steps = state_dict.get("skipped_steps", optimizer.skipped_steps)
