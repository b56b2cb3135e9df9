"""Option checks shared by every optimizer: types from the constructor's annotations, and the
value validators torch.optim's constructors use (same messages).

An optimizer's own ``check_options(options)`` validates its hyperparameters; the base runs it
on the constructor's options and on the merged options of every param group that sets its own,
so a group is checked exactly as a constructor call would be.
"""

import functools
import inspect
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastoptim.state import check_state_dtype

# Device types on which torch's optimizers accept ``capturable=True``.
CAPTURABLE_DEVICES = ["cuda", "xpu", "hpu", "privateuseone", "xla"]

# What ``nonfinite`` may be: off (as torch.optim), skip the step, or raise.
NONFINITE_MODES = (None, "skip", "raise")


def describe(hint: Any) -> str:
    """A type annotation of an option in words."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if typing.get_origin(hint) is tuple:
        return f"a pair of ({', '.join(describe(arg) for arg in args)})"
    names = {float: "a number", bool: "True or False", Tensor: "a Tensor", str: "a string"}
    return "None" if hint is type(None) else names.get(hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type of an option annotated ``hint`` (a number for float,
    but not a bool; exactly a bool for bool)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if typing.get_origin(hint) is tuple:
        return (
            isinstance(value, (tuple, list))
            and len(value) == len(args)
            and all(matches(v, arg) for v, arg in zip(value, args, strict=True))
        )
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is type(None):
        return value is None
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


@functools.cache
def option_hints(cls: type) -> dict[str, Any]:
    """The annotated options of ``cls``'s constructor (``params`` excluded); none for a
    user's subclass whose annotations cannot be resolved (its own checks then apply)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):
        return {}
    return {name: hint for name, hint in hints.items() if name not in ("params", "return")}


def check_option_types(cls: type, options: dict[str, Any]) -> None:
    """TypeError naming the option, what it must be and what it got, for any option of
    ``options`` whose type does not match ``cls``'s constructor annotation."""
    hints = option_hints(cls)
    for name, value in options.items():
        if name in hints and not matches(value, hints[name]):
            raise TypeError(
                f"{cls.__name__}: {name} must be {describe(hints[name])}, "
                f"got {type(value).__name__} {value!r}"
            )


def checked_init(cls: type, init: Callable[..., None]) -> Callable[..., None]:
    """``init`` that first checks its arguments: unknown options (listing the valid ones) and
    the types of the known ones, before any value is looked at."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            valid = ", ".join(name for name in signature.parameters if name != "self")
            raise TypeError(f"{cls.__name__}: {error}; its arguments are {valid}") from None
        check_option_types(cls, bound.arguments)
        init(self, *args, **kwargs)

    return checked


def check_non_negative(value: float | Tensor, what: str) -> None:
    """Raise ``ValueError("Invalid <what>: <value>")`` unless ``0 <= value``."""
    if not value >= 0.0:
        raise ValueError(f"Invalid {what}: {value}")


def check_lr(lr: float | Tensor) -> None:
    """torch.optim's learning-rate checks: a Tensor holds one element; never negative."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    check_non_negative(lr, "learning rate")


def check_betas(betas: tuple[float | Tensor, float | Tensor]) -> None:
    """Each beta in [0, 1), as torch.optim's Adam-family constructors check."""
    for index in (0, 1):
        if not 0.0 <= betas[index] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {betas[index]}")


def check_common_options(options: dict[str, Any]) -> None:
    """The options fastoptim adds to every optimizer: ``state_dtype`` (one of the formats of
    fastoptim.state, kept only by the kernels), ``nonfinite``."""
    check_state_dtype(options.get("state_dtype"))
    if options.get("nonfinite") not in NONFINITE_MODES:
        raise ValueError(f"nonfinite must be None, 'skip' or 'raise', got {options['nonfinite']!r}")
    check_kernel_for_state(options)


def check_kernel_for_state(options: dict[str, Any]) -> None:
    """Compact state is updated only by the kernels: it rules out fused=False and
    differentiable=True."""
    state_dtype = options.get("state_dtype")
    if state_dtype is not None and (options["fused"] is False or options["differentiable"]):
        raise ValueError(
            f"state_dtype={state_dtype!r} keeps state that only fastoptim's fused kernels "
            "update: it needs fused=None or True and differentiable=False"
        )


def as_scalar(value: float | Tensor) -> float | Tensor:
    """A one-element Tensor hyperparameter as a 0-d Tensor; anything else unchanged."""
    return value.squeeze() if isinstance(value, Tensor) and value.dim() != 0 else value


def scalar_dtype() -> torch.dtype:
    """The dtype of per-parameter scalars such as ``step``: float64 under a float64 default
    dtype, else float32 (as torch.optim)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
