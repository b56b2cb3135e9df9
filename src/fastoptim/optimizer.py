"""The shared base of fastoptim's optimizers: stepping, state creation and option checks.

Every public optimizer derives from :class:`BaseOptimizer`, itself a plain subclass of
``torch.optim.Optimizer``, so schedulers, hooks, ``state_dict`` and ``isinstance`` checks work
as with torch.optim. A subclass supplies its hyperparameter checks, ``_init_state`` (the state
layout of one parameter), ``_reference_step`` (the update rule in torch.optim's operation order)
and the glue to its fused kernel (``_kernel_state_keys``, ``_launch_kernel``) and to torch's
implementation for other devices (``_torch_step``).
"""

import contextlib
import functools
import inspect
import numbers
import operator
import os
import pickle
import threading
import types
import typing
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any, ClassVar

import numba
import numpy as np
import torch
from torch import Tensor

from fastoptim.kernels.checks import count_nonfinite
from fastoptim.kernels.memory import QBLOCK
from fastoptim.state import (
    ABSMAX,
    CODES,
    INT8,
    DTensor,
    StateFormat,
    check_state_dtype,
    convert_buffer,
    local,
    state_format,
)

# Device types on which torch's optimizers accept ``capturable=True``.
CAPTURABLE_DEVICES = ["cuda", "xpu", "hpu", "privateuseone", "xla"]

# Storage type markers of the kernels (see fastoptim.kernels.memory); complex tensors are
# updated through their real view.
KERNEL_MARKERS = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.bfloat16: np.dtype(np.uint16),
    torch.float16: np.dtype(np.int16),  # float16 bits: Numba has no float16 arrays on the CPU
    torch.complex64: np.dtype(np.float32),
    torch.complex128: np.dtype(np.float64),
}
STEP_MARKERS = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
STATE_MARKERS: dict[StateFormat, np.dtype] = {**KERNEL_MARKERS, INT8: np.dtype(np.int8)}
STATE_LAYOUT_OPTIONS = ("state_dtype", "stochastic_rounding")

# The key that marks a state dict keyed by parameter names (``state_dict(named=True)``).
NAMED = "keyed_by_name"

# What ``nonfinite`` may be: off (as torch.optim), skip the step, or raise.
NONFINITE_MODES = (None, "skip", "raise")


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or infinity and the optimizer was built with nonfinite="raise";
    the step was not taken."""


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


# Numba's default thread pool serves one kernel at a time: Python threads take turns.
KERNEL_LOCK = threading.Lock()


@contextlib.contextmanager
def kernel_turn() -> Iterator[None]:
    """This Python thread's turn to run kernels, on as many threads as torch uses. Numba's
    OpenMP pool, started by the first kernel, resets the thread count that torch shares with
    it (``torch.set_num_threads(1)`` would become 2): the user's count is put back."""
    with KERNEL_LOCK:
        threads = torch.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


def scalar_dtype() -> torch.dtype:
    """The dtype of the ``step`` counter: float64 under a float64 default dtype, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def real_view(tensor: Tensor) -> Tensor:
    """A complex tensor as a real one with a trailing dimension of 2; real tensors unchanged."""
    return torch.view_as_real(tensor) if torch.is_complex(tensor) else tensor


def check_non_negative(value: float | Tensor, what: str) -> None:
    """Raise ``ValueError("Invalid <what>: <value>")`` unless ``0 <= value``."""
    if not value >= 0.0:
        raise ValueError(f"Invalid {what}: {value}")


def check_tensor_lr(lr: float | Tensor) -> None:
    """A Tensor learning rate must hold exactly one element."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")


def as_scalar(value: float | Tensor) -> float | Tensor:
    """A one-element Tensor hyperparameter as a 0-d Tensor; anything else unchanged."""
    return value.squeeze() if isinstance(value, Tensor) and value.dim() != 0 else value


@dataclass
class KernelBatch:
    """Parameters of one dtype, state format and step dtype that one kernel call updates;
    ``indices`` are their positions among the group's parameters with a gradient."""

    dtype: torch.dtype
    state_format: StateFormat
    step_dtype: torch.dtype
    params: list[Tensor] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)


@dataclass
class KernelCall:
    """What a fused kernel needs besides the group's hyperparameters.

    ``addresses`` holds one column per tensor and one row per role: param, grad, then the
    optimizer's ``_kernel_state_keys``; ``scales`` holds, in the same places, the addresses of
    8-bit buffers' block scales. ``fresh`` marks tensors whose state this step created; ``key``
    seeds the random bits of stochastic rounding.
    """

    addresses: np.ndarray
    scales: np.ndarray
    sizes: np.ndarray
    marker: np.dtype
    state_marker: np.dtype
    step_marker: np.dtype
    fresh: np.ndarray
    grad_factor: float = 1.0
    key: int = 0
    stochastic: bool = True

    @property
    def memory(self) -> tuple[np.ndarray, np.ndarray, int, bool]:
        """The kernels' ``memory`` argument (see fastoptim.kernels.memory.open_buffer)."""
        return self.addresses, self.scales, self.key, self.stochastic


@dataclass
class LaidOutBatch:
    """One kernel call of a group's layout, with the state tensors its addresses point at
    (``state_keys`` name them in each parameter's state dict)."""

    indices: np.ndarray
    call: KernelCall
    states: list[dict[str, Any]]
    state_keys: list[str]
    state_tensors: list[list[Tensor]]


@dataclass
class GroupPlan:
    """One group's step: the parameters with a gradient, the kernel batches (or the calls
    reused from the group's layout), and the parameters left to the other paths."""

    group: dict[str, Any]
    params: list[Tensor]
    batches: list[KernelBatch] = field(default_factory=list)
    others: list[Tensor] = field(default_factory=list)
    calls: list[KernelCall] | None = None


@dataclass
class GroupLayout:
    """A group's kernel calls from its previous step, reused while the same parameters have
    gradients (same storage, same layout) and the same state tensors: then a step only gathers
    the gradients' addresses. ``params`` are those with a gradient."""

    group: dict[str, Any]
    state_table: dict[Tensor, Any]
    group_params: list[Tensor]
    without_grad: list[bool]
    params: list[Tensor]
    param_addresses: list[int]
    grad_specs: list[tuple[torch.Size, torch.dtype]]
    empty: np.ndarray
    distributed: bool
    strided: list[tuple[int, tuple[int, ...]]]
    kernel_keys: list[str]
    batches: list[LaidOutBatch]


def pointers_of(tensors: list[Tensor], distributed: bool = True) -> list[int]:
    """The ``data_ptr()`` of each tensor (of its local shard for a DTensor).
    ``distributed=False`` promises plain tensors (faster)."""
    if not distributed:
        return list(map(Tensor.data_ptr, tensors))
    return [local(t).data_ptr() for t in tensors]


def addresses_of(tensors: list[Tensor]) -> np.ndarray:
    """:func:`pointers_of` as int64, the kernels' address arrays."""
    return np.array(pointers_of(tensors), np.int64)


# A gradient's (shape, dtype): what the kernel layout of a group assumes between steps.
GRAD_SPEC = operator.attrgetter("shape", "dtype")


def kernel_blocker(param: Tensor) -> str | None:
    """Why the fused kernel cannot update ``param`` with its gradient, or None.

    torch already guarantees that ``param.grad`` has the parameter's shape, dtype and device.
    A DTensor (FSDP2) is judged by its local shard, which is what the kernel updates.
    """
    grad = local(param.grad)
    param = local(param)
    if not param.is_cpu:
        return f"it is on {param.device}; fastoptim's kernels run on the CPU"
    if grad.is_sparse:
        return "its gradient is sparse"
    if param.layout is not torch.strided or grad.layout is not torch.strided:
        return "it or its gradient is not a strided (dense) tensor"
    if param.numel() and (param.data_ptr() == 0 or grad.data_ptr() == 0):
        return f"it is a {type(param).__name__} without memory of its own (a wrapper subclass)"
    if param.dtype not in KERNEL_MARKERS:
        return f"its dtype is {param.dtype}; kernels take float32, float64, bfloat16, float16 and complex"
    if param.is_contiguous():
        if not grad.is_contiguous():
            return "its gradient is not contiguous like the parameter"
    elif not is_dense(param) or grad.stride() != param.stride():
        return "it is not dense, or its gradient has other strides"
    return None


def state_blocker(
    param: Tensor, state: dict[str, Any], keys: list[str], target: StateFormat, signed: set[str]
) -> str | None:
    """Why the kernel cannot use ``param``'s state tensors (dtype, size, layout, or not kept
    in format ``target``), or None. ``signed``: the buffers that take signed 8-bit codes.
    DTensors are judged by their local shards."""
    param = local(param)
    for key in keys:
        if key == "step":
            step = state.get(key)
            usable = step is not None and step.is_cpu and step.numel() == 1
            if not usable or step.dtype not in STEP_MARKERS:
                return "its step counter is not a float32 or float64 CPU scalar"
            continue
        if target == INT8:
            codes, scales = state.get(key + CODES), state.get(key + ABSMAX)
            code_dtype = torch.int8 if key in signed else torch.uint8
            if codes is None or scales is None:
                return f"its state lacks {key + CODES!r} or {key + ABSMAX!r}"
            codes, scales = local(codes), local(scales)
            blocks = (param.numel() + QBLOCK - 1) // QBLOCK
            if (
                codes.dtype != code_dtype
                or codes.shape != param.shape
                or codes.stride() != param.stride()
                or scales.dtype != torch.float32
                or scales.shape != (blocks,)
            ):
                return f"its state {key + CODES!r} or {key + ABSMAX!r} has another layout"
            continue
        value = state.get(key)
        if value is None:
            return f"its state lacks {key!r}"
        value = local(value)
        if value.dtype != target or value.shape != param.shape or value.stride() != param.stride():
            return f"its state {key!r} differs from it in dtype, shape or strides"
    return None


def is_dense(tensor: Tensor) -> bool:
    """Whether ``tensor``'s elements fill one block of memory, in some order of dimensions."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride(), strict=True), key=lambda d: d[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


# What load_state_dict puts back when loading fails part way.
RESTORED_ON_FAILURE = (
    "state",
    "param_groups",
    "_rounding_seed",
    "_rounding_steps",
    "skipped_steps",
)


def optimizer_classes() -> list[type]:
    """Every fastoptim optimizer class (the subclasses of BaseOptimizer)."""
    found, pending = [], list(BaseOptimizer.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


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


def check_kernel_for_state(options: dict[str, Any]) -> None:
    """Compact state is updated only by the kernels: it rules out fused=False and
    differentiable=True."""
    state_dtype = options.get("state_dtype")
    if state_dtype is not None and (options["fused"] is False or options["differentiable"]):
        raise ValueError(
            f"state_dtype={state_dtype!r} keeps state that only fastoptim's fused kernels "
            "update: it needs fused=None or True and differentiable=False"
        )


class BaseOptimizer(torch.optim.Optimizer):
    """Param groups, lazy state and ``step()`` shared by every optimizer.

    ``step()`` checks every group before it updates any, so a rejected step changes nothing.
    """

    #: Message of the RuntimeError raised for a sparse gradient; None where they are supported.
    sparse_grad_error: ClassVar[str | None] = None

    #: GradScaler hands over ``grad_scale`` and ``found_inf`` instead of unscaling (see step).
    _step_supports_amp_scaling = True

    #: The named memory rows of the optimizer's fused kernel (fastoptim.kernels.memory).
    kernel_rows: ClassVar[Any] = None

    #: The state buffers ``state_dtype`` applies to, and those of them that are never negative
    #: (kept as unsigned 8-bit codes).
    state_buffers: ClassVar[tuple[str, ...]] = ()
    non_negative_state: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every optimizer's constructor checks its arguments' types first."""
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = checked_init(cls, cls.__dict__["__init__"])  # type: ignore[method-assign]

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        if isinstance(params, torch.nn.Module):
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Tensors, (name, Tensor) "
                f"pairs or param-group dicts, got the module {type(params).__name__}: "
                "pass model.parameters()"
            )
        self.skipped_steps = 0
        self._layouts: dict[int, GroupLayout] = {}
        self._state_snapshot: list[dict[str, Any]] = []
        self._rounding_seed = torch.initial_seed()
        self._rounding_steps = 0
        super().__init__(params, defaults)
        if defaults.get("fused"):
            if defaults["differentiable"]:
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, after checking it: a dict with ``params``, options of the right types
        and values (see fastoptim.state for the compact-state ones), no parameter twice."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(
                f"a param group needs 'params' (its parameters), got only {sorted(param_group)}"
            )
        check_option_types(type(self), param_group)
        self._check_group_values(param_group)
        options = {**self.defaults, **param_group}
        check_state_dtype(options.get("state_dtype"))
        if options.get("nonfinite") not in NONFINITE_MODES:
            raise ValueError(
                f"nonfinite must be None, 'skip' or 'raise', got {options['nonfinite']!r}"
            )
        check_kernel_for_state(options)
        params = param_group["params"]
        if not isinstance(params, (Tensor, set)):
            params = param_group["params"] = list(params)
            tensors = [p[1] if isinstance(p, tuple) else p for p in params]
            if len({id(p) for p in tensors}) != len(tensors):
                raise ValueError("a parameter appears twice in the same param group")
        super().add_param_group(param_group)

    def _check_group_values(self, param_group: dict[str, Any]) -> None:
        """Check the values of the options a group sets for itself, as the constructor checks
        its own (the same errors): by constructing a throwaway optimizer with them."""
        hints = option_hints(type(self))
        overrides = {
            key: value
            for key, value in param_group.items()
            if key in hints and (key not in self.defaults or value is not self.defaults[key])
        }
        if overrides:
            options = {key: value for key, value in self.defaults.items() if key in hints}
            type(self)([torch.zeros(1, requires_grad=True)], **{**options, **overrides})

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore pickled or loaded state; options missing from a group take this optimizer's
        values (its constructor's, or the signature's defaults for an older pickle)."""
        super().__setstate__(state)
        self._layouts = {}
        self._state_snapshot = []
        self.__dict__.setdefault("_rounding_seed", torch.initial_seed())
        self.__dict__.setdefault("_rounding_steps", 0)
        self.__dict__.setdefault("skipped_steps", 0)
        signature_defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
        }
        for name, value in signature_defaults.items():
            if name not in ("self", "params"):
                self.defaults.setdefault(name, value)
        for group in self.param_groups:
            for name in self.defaults:
                # A group saved without an option (by torch.optim, or an older fastoptim)
                # takes this optimizer's value: compact state stays as constructed.
                group.setdefault(name, self.defaults[name])
            for param in group["params"]:
                param_state = self.state.get(param)
                if (
                    param_state
                    and "step" in param_state
                    and not torch.is_tensor(param_state["step"])
                ):
                    param_state["step"] = self._new_step(param, group, float(param_state["step"]))

    @staticmethod
    def _new_step(param: Tensor, group: dict[str, Any], value: float = 0.0) -> Tensor:
        """The ``step`` counter of a parameter's state, with torch.optim's dtype and device."""
        if group.get("fused"):
            return torch.full((), value, dtype=torch.float32, device=param.device)
        if group.get("capturable"):
            return torch.full((), value, dtype=scalar_dtype(), device=param.device)
        return torch.tensor(value, dtype=scalar_dtype())

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; return the loss of ``closure`` if one is given.

        Under ``torch.amp.GradScaler`` (which sets ``grad_scale`` and ``found_inf``), gradients
        are unscaled inside the update, and a step with ``found_inf`` set changes nothing.
        Everything is checked before the first parameter or state changes: gradients of
        another shape, dtype or device, sparse gradients where they are not supported, and
        with ``nonfinite`` set, NaN or infinite gradients (the step is then skipped and counted
        in ``skipped_steps``, or raises ``NonFiniteGradientError``).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and found_inf.item() != 0:
            return loss
        grad_scale = getattr(self, "grad_scale", None)
        inv_scale = None if grad_scale is None else grad_scale.double().reciprocal().float()
        unscale = 1.0 if inv_scale is None else inv_scale.item()
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            snapshot = self._state_snapshot
            same_states = len(snapshot) == len(self.state) and all(
                map(operator.is_, self.state.values(), snapshot)
            )
            plans = [self._plan(group, same_states) for group in self.param_groups]
            if self._has_nonfinite_gradient(plans):
                self.skipped_steps += 1
                return loss
            calls = [self._new_calls(plan) if plan.calls is None else plan.calls for plan in plans]
            self._rounding_steps += 1
            for group_index, (plan, group_calls) in enumerate(zip(plans, calls, strict=True)):
                for call_index, call in enumerate(group_calls):
                    call.grad_factor = -unscale if plan.group["maximize"] else unscale
                    call.stochastic = plan.group["stochastic_rounding"] is not False
                    call.key = hash(
                        (self._rounding_seed, self._rounding_steps, group_index, call_index)
                    )
                    self._run_kernel(plan.group, call)
                if plan.others:
                    self._step_without_kernel(plan.group, plan.others, inv_scale)
            self._state_snapshot = list(self.state.values())
        return loss

    def _has_nonfinite_gradient(self, plans: list[GroupPlan]) -> bool:
        """Whether a group with ``nonfinite`` set has a NaN or infinite gradient: one fused
        read of its kernel batches' gradients, torch's isfinite for the others. With
        ``nonfinite="raise"`` that raises NonFiniteGradientError naming the parameter."""
        for group_index, plan in enumerate(plans):
            mode = plan.group["nonfinite"]
            if mode is None:
                continue
            bad = any(not torch.isfinite(local(p.grad)).all() for p in plan.others)
            if plan.calls is not None:
                batches = [(c.addresses[1], c.sizes, c.marker) for c in plan.calls]
            else:
                batches = [self._grad_batch(batch) for batch in plan.batches]
            with kernel_turn():
                bad = bad or any(count_nonfinite(*batch) for batch in batches)
            if bad and mode == "raise":
                first = next(p for p in plan.params if not torch.isfinite(local(p.grad)).all())
                index = [id(p) for p in plan.group["params"]].index(id(first))
                raise NonFiniteGradientError(
                    f"the gradient of {self._where(group_index, index)} holds NaN or infinity "
                    "(nonfinite='raise'): no parameter or state was changed"
                )
            if bad:
                return True
        return False

    @staticmethod
    def _grad_batch(batch: KernelBatch) -> tuple[np.ndarray, np.ndarray, np.dtype]:
        """A kernel batch's gradients as (addresses, sizes, storage marker)."""
        grads = [p.grad for p in batch.params]
        sizes = np.array([local(g).numel() for g in grads], np.int64)
        if batch.dtype.is_complex:
            sizes *= 2
        return addresses_of(grads), sizes, KERNEL_MARKERS[batch.dtype]

    def _where(self, group_index: int, index: int) -> str:
        """How an error names parameter ``index`` of group ``group_index``."""
        group = self.param_groups[group_index]
        if "param_names" in group:
            return f"parameter {group['param_names'][index]!r}"
        return f"parameter {index} of param group {group_index}"

    def _check_gradients(self, group: dict[str, Any]) -> None:
        """RuntimeError naming the first parameter whose gradient differs from it in shape,
        dtype or device (possible through ``grad.data`` or ``set_``)."""
        for index, param in enumerate(group["params"]):
            grad = param.grad
            if grad is None:
                continue
            for what in ("shape", "dtype", "device"):
                found, expected = getattr(grad, what), getattr(param, what)
                if found != expected:
                    group_index = next(i for i, g in enumerate(self.param_groups) if g is group)
                    if what == "shape":
                        found, expected = tuple(found), tuple(expected)
                    raise RuntimeError(
                        f"the gradient of {self._where(group_index, index)} has {what} "
                        f"{found}, the parameter {expected}: no parameter or state was changed"
                    )

    def _plan(self, group: dict[str, Any], same_states: bool) -> GroupPlan:
        """Check the group's parameters with a gradient and split them between the kernel
        (batches of one dtype) and the other paths. Nothing is changed here. ``same_states``:
        the state table holds the same per-parameter dicts as after the previous step."""
        if same_states and group["fused"] is not False and not group["differentiable"]:
            reused = self._reuse_layout(group)
            if reused is not None:
                return reused
        self._check_gradients(group)
        params = [p for p in group["params"] if p.grad is not None]
        if self.sparse_grad_error is not None and any(p.grad.is_sparse for p in params):
            raise RuntimeError(self.sparse_grad_error)
        if group.get("capturable") and any(p.device.type not in CAPTURABLE_DEVICES for p in params):
            raise AssertionError(
                "If capturable=True, params and state_steps must be on supported devices: "
                f"{CAPTURABLE_DEVICES}."
            )
        check_kernel_for_state(group)
        if group["fused"] is False or group["differentiable"] or not params:
            return GroupPlan(group, params, others=params)
        plan = GroupPlan(group, params)
        batches: dict[tuple[torch.dtype, StateFormat, torch.dtype], KernelBatch] = {}
        keys, default_step = self._kernel_state_keys(group), scalar_dtype()
        signed = set(self.state_buffers) - self.non_negative_state
        for index, param in enumerate(params):
            state = self.state.get(param)
            target = state_format(param, group["state_dtype"])
            blocker = kernel_blocker(param)
            if blocker is None and state:
                blocker = state_blocker(param, state, keys, target, signed)
            if blocker is not None:
                if group["state_dtype"] is not None:
                    raise RuntimeError(
                        f"state_dtype={group['state_dtype']!r} needs fastoptim's kernel, which "
                        f"cannot update a parameter: {blocker}"
                    )
                if group["fused"] and param.is_cpu:
                    raise RuntimeError(f"fused=True cannot update a parameter: {blocker}")
                plan.others.append(param)
                continue
            step_dtype = state["step"].dtype if state and "step" in state else default_step
            key = (param.dtype, target, step_dtype)
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = KernelBatch(*key)
            batch.params.append(param)
            batch.indices.append(index)
        plan.batches = list(batches.values())
        return plan

    def _reuse_layout(self, group: dict[str, Any]) -> GroupPlan | None:
        """The group's plan of its previous step with this step's gradient addresses, or None
        when anything it depends on has changed (then the group is planned anew). The caller
        has checked that every parameter's state dict is the one of the previous step."""
        layout = self._layouts.get(id(group))
        group_params = group["params"]
        if (
            layout is None
            or layout.group is not group
            or layout.state_table is not self.state
            or len(group_params) != len(layout.without_grad)
            or not all(map(operator.is_, group_params, layout.group_params))
            or self._kernel_state_keys(group) != layout.kernel_keys
        ):
            return None
        grads = [p.grad for p in group_params]
        without_grad = [grad is None for grad in grads]
        if without_grad != layout.without_grad:
            return None
        if any(without_grad):
            grads = [grad for grad in grads if grad is not None]
        if list(map(GRAD_SPEC, grads)) != layout.grad_specs:
            return None
        distributed = layout.distributed
        params = layout.params
        if distributed:
            laid_out = [local(grad).is_contiguous() for grad in grads]
        else:
            laid_out = list(map(Tensor.is_contiguous, grads))
        for index, stride in layout.strided:
            grad = local(grads[index])
            laid_out[index] = grad.layout is torch.strided and grad.stride() == stride
        if not all(laid_out):
            return None
        for batch in layout.batches:
            for key, row in zip(batch.state_keys, batch.state_tensors, strict=True):
                if not all(map(operator.is_, [state.get(key) for state in batch.states], row)):
                    return None
        if pointers_of(params, distributed) != layout.param_addresses:
            return None
        grad_pointers = pointers_of(grads, distributed)
        grad_addresses = np.array(grad_pointers, np.int64)
        if 0 in grad_pointers and not (grad_addresses | layout.empty).all():
            return None  # a gradient without memory (meta, ...)
        for batch in layout.batches:  # the calls are the layout's: only the gradients moved
            batch.call.addresses[1] = grad_addresses[batch.indices]
        return GroupPlan(group, params, calls=[batch.call for batch in layout.batches])

    def _new_calls(self, plan: GroupPlan) -> list[KernelCall]:
        """Create missing state and the kernel calls of a freshly planned group; remember them
        as the group's layout when the kernel covers the whole group."""
        group, keys = plan.group, self._kernel_state_keys(plan.group)
        calls, laid_out = [], []
        for batch in plan.batches:
            fresh = np.array([not self.state.get(p) for p in batch.params], np.bool_)
            states = [self._state_of(p, group) for p in batch.params]
            quantized = [key != "step" and batch.state_format == INT8 for key in keys]
            data_keys = [key + CODES if q else key for key, q in zip(keys, quantized, strict=True)]
            scale_keys = [key + ABSMAX for key, q in zip(keys, quantized, strict=True) if q]
            state_tensors = [[state[key] for state in states] for key in data_keys + scale_keys]
            # Each tensor's addresses go in the kernel's row of its name; unused rows stay 0.
            rows = self.kernel_rows
            addresses = np.zeros((len(rows), len(batch.params)), np.int64)
            addresses[rows.param] = addresses_of(batch.params)
            addresses[rows.grad] = addresses_of([p.grad for p in batch.params])
            scales = np.zeros_like(addresses)
            scale_rows = iter(state_tensors[len(keys) :])
            for key, q, row in zip(keys, quantized, state_tensors, strict=False):
                addresses[getattr(rows, key)] = addresses_of(row)
                if q:
                    scales[getattr(rows, key)] = addresses_of(next(scale_rows))
            sizes = np.array([local(p).numel() for p in batch.params], np.int64)
            if batch.dtype.is_complex:
                sizes *= 2
            call = KernelCall(
                addresses,
                scales,
                sizes,
                KERNEL_MARKERS[batch.dtype],
                STATE_MARKERS[batch.state_format],
                STEP_MARKERS[batch.step_dtype],
                fresh,
            )
            calls.append(call)
            steady = replace(call, fresh=np.zeros_like(fresh))
            indices = np.array(batch.indices)
            laid_out.append(
                LaidOutBatch(indices, steady, states, data_keys + scale_keys, state_tensors)
            )
        if plan.batches and not plan.others:
            params = plan.params
            self._layouts[id(group)] = GroupLayout(
                group=group,
                state_table=self.state,
                group_params=list(group["params"]),
                without_grad=[p.grad is None for p in group["params"]],
                params=params,
                param_addresses=pointers_of(params),
                grad_specs=[(p.shape, p.dtype) for p in params],
                empty=np.array([p.numel() == 0 for p in params]),
                distributed=DTensor is not None and any(isinstance(p, DTensor) for p in params),
                strided=[
                    (i, local(p).stride())
                    for i, p in enumerate(params)
                    if not local(p).is_contiguous()
                ],
                kernel_keys=keys,
                batches=laid_out,
            )
        return calls

    def _run_kernel(self, group: dict[str, Any], call: KernelCall) -> None:
        """Run one fused kernel call on as many threads as torch uses."""
        with kernel_turn():
            self._launch_kernel(group, call)

    def _step_without_kernel(
        self, group: dict[str, Any], params: list[Tensor], inv_scale: Tensor | None
    ) -> None:
        """The reference update on the CPU; torch's own implementation on other devices."""
        grads = [p.grad if inv_scale is None else p.grad * inv_scale.to(p.device) for p in params]
        on_cpu = [i for i, p in enumerate(params) if p.device.type == "cpu"]
        for i in on_cpu:
            self._reference_step(params[i], grads[i], group)
        elsewhere = [i for i, p in enumerate(params) if p.device.type != "cpu"]
        if elsewhere:
            self._torch_step(group, [params[i] for i in elsewhere], [grads[i] for i in elsewhere])

    def _state_of(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """The state of ``param``, created on first use (in the group's state format); no
        entry in ``self.state`` when the optimizer keeps nothing for it, as torch.optim."""
        state = self.state.get(param)
        if state:
            return state
        state = {}
        self._init_state(param, group, state)
        if state:  # an optimizer with no state for it (SGD without momentum) keeps no entry
            self._convert_state(param, group, state)
            self.state[param] = state
        return state

    def _convert_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Keep ``param``'s buffers in the format its group's ``state_dtype`` asks for."""
        target = state_format(param, group["state_dtype"])
        for key in self.state_buffers:
            convert_buffer(state, key, target, signed=key not in self.non_negative_state)

    def state_dict(self, named: bool = False) -> dict[str, Any]:  # type: ignore[override]
        """torch.optim's state dict, plus ``"rounding"``: where the random stream of stochastic
        rounding stands (seed and steps), so a resumed run rounds as an uninterrupted one.

        ``named=True`` keys the state and each group's ``params`` by parameter name instead
        of position (and sets ``"keyed_by_name"``), so the checkpoint survives a reordering of
        parameters. The names are
        those the optimizer was built with (``model.named_parameters()``, or
        ``fastoptim.create_optimizer``); ``ValueError`` if it has none.
        """
        state_dict = super().state_dict()
        state_dict["rounding"] = {"seed": self._rounding_seed, "steps": self._rounding_steps}
        state_dict["optimizer"] = type(self).__name__
        state_dict["skipped_steps"] = self.skipped_steps
        params = [p for group in self.param_groups for p in group["params"]]
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
        names = self._param_names()
        groups = [
            {**group, "params": [names[index] for index in group["params"]]}
            for group in state_dict["param_groups"]
        ]
        state = {names[index]: value for index, value in state_dict["state"].items()}
        return {**state_dict, "state": state, "param_groups": groups, NAMED: True}

    def _param_names(self) -> list[str]:
        """Every parameter's name, in state_dict position order; ValueError if unnamed."""
        if not all("param_names" in group for group in self.param_groups):
            raise ValueError(
                "state_dict(named=True) needs parameter names: build the optimizer from "
                "model.named_parameters() or with fastoptim.create_optimizer(model, ...)"
            )
        return [name for group in self.param_groups for name in group["param_names"]]

    def _positional(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """A ``state_dict(named=True)`` as the positional state dict of this optimizer's
        current parameter order; ValueError listing missing and unexpected names, or names
        in another group, before anything changes."""
        names = self._param_names()
        saved_groups = state_dict["param_groups"]
        saved = [name for group in saved_groups for name in group["params"]]
        missing = [name for name in names if name not in set(saved)]
        unexpected = [name for name in saved if name not in set(names)]
        if missing or unexpected or len(saved) != len(set(saved)):
            raise ValueError(
                "loaded named state dict does not match the optimizer's parameters: "
                f"missing {missing}, unexpected {unexpected}"
            )
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded named state dict has {len(saved_groups)} parameter groups, "
                f"the optimizer {len(self.param_groups)}"
            )
        position = {name: index for index, name in enumerate(names)}
        groups = []
        for index, (group, saved_group) in enumerate(
            zip(self.param_groups, saved_groups, strict=True)
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

    def load_state_dict(self, state_dict: "dict[str, Any] | str | os.PathLike[str]") -> None:
        """Load a state dict of fastoptim or torch.optim, or a checkpoint file of one (read
        with ``torch.load(weights_only=True)``). Each group keeps this optimizer's
        ``state_dtype`` and ``stochastic_rounding``; loaded buffers are converted to that format
        (8-bit codes and scales saved by the same format load back exactly). A
        ``state_dict(named=True)`` is matched to the parameters by name.

        Atomic: the whole state dict is checked first (its structure, group and parameter
        counts, the optimizer it comes from, state tensor shapes); any mismatch raises an
        error saying what differs, and the optimizer stays exactly as it was.
        """
        if isinstance(state_dict, (str, os.PathLike)):
            state_dict = read_checkpoint(state_dict)
        check_state_dict_structure(state_dict)
        # Only our own marker: torch.distributed.checkpoint passes name-keyed dicts that it
        # has put in this optimizer's order, to be loaded by position.
        if state_dict.get(NAMED):
            state_dict = self._positional(state_dict)
        self._check_state_dict(state_dict)
        before = {key: self.__dict__[key] for key in RESTORED_ON_FAILURE}
        try:
            self._load_checked_state_dict(state_dict)
        except BaseException:
            self.__dict__.update(before)
            self._layouts, self._state_snapshot = {}, []
            raise

    def _check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """ValueError saying what differs if ``state_dict`` (positional) cannot be this
        optimizer's: another optimizer, other group or parameter counts, unknown state
        entries, or state tensors of another shape."""
        name = type(self).__name__
        kind = state_dict.get("optimizer")
        if kind is not None and kind != name:
            raise ValueError(f"the state dict is of {kind}, not of {name}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the state dict has {len(saved_groups)} param groups, {name} has "
                f"{len(self.param_groups)}"
            )
        ours = set(option_hints(type(self))) | set(self.defaults)
        foreign = {
            option
            for cls in optimizer_classes()
            for option in option_hints(cls)
            if option not in ours
        }
        params = {}
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
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
        allowed = {"step"} | set(self.state_buffers)
        allowed |= {key + suffix for key in self.state_buffers for suffix in (CODES, ABSMAX)}
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
                expected = self._expected_shape(param, str(key))
                if isinstance(value, Tensor) and expected is not None and value.shape != expected:
                    raise ValueError(
                        f"the state {key!r} of parameter {param_id} has shape "
                        f"{tuple(value.shape)}, {name} expects {tuple(expected)} for its "
                        f"parameter of shape {tuple(param.shape)}"
                    )

    @staticmethod
    def _expected_shape(param: Tensor, key: str) -> torch.Size | None:
        """The shape a state tensor ``key`` of ``param`` must have (None: any)."""
        if key == "step":
            return None
        if key.endswith(ABSMAX):
            if DTensor is not None and isinstance(param, DTensor):
                return None  # a shard's scales cover its local elements only
            return torch.Size(((param.numel() + QBLOCK - 1) // QBLOCK,))
        return param.shape

    def _load_checked_state_dict(self, state_dict: dict[str, Any]) -> None:
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
        # How state is kept belongs to this optimizer, not to the checkpoint.
        layouts = [{key: g[key] for key in STATE_LAYOUT_OPTIONS} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, layout in zip(self.param_groups, layouts, strict=True):
            group.update(layout)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for param_id, param in zip(saved_ids, params, strict=True):
            entries = compact.get(param_id)
            if entries:
                self.state[param].update({k: v.to(param.device) for k, v in entries.items()})
        for group in self.param_groups:
            for param in group["params"]:
                if self.state.get(param):
                    self._convert_state(param, group, self.state[param])
        rounding = state_dict.get("rounding")
        if rounding is not None:
            self._rounding_seed, self._rounding_steps = rounding["seed"], rounding["steps"]
        self.skipped_steps = state_dict.get("skipped_steps", self.skipped_steps)

    def _init_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Fill the empty ``state`` of ``param`` with the optimizer's initial buffers."""
        raise NotImplementedError

    def _kernel_state_keys(self, group: dict[str, Any]) -> list[str]:
        """The state tensors the fused kernel reads and writes (after param and grad), in its
        row order."""
        raise NotImplementedError

    def _launch_kernel(self, group: dict[str, Any], call: KernelCall) -> None:
        """Call the optimizer's fused kernel with the group's hyperparameters."""
        raise NotImplementedError

    def _reference_step(self, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        """Update one parameter with the reference (torch.optim for-loop order) math."""
        raise NotImplementedError

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Update parameters on a device without fastoptim kernels with torch's implementation."""
        raise NotImplementedError
