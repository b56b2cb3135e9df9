"""The shared base of fastoptim's optimizers: stepping, state creation and option checks.

Every public optimizer derives from :class:`BaseOptimizer`, itself a plain subclass of
``torch.optim.Optimizer``, so schedulers, hooks, ``state_dict`` and ``isinstance`` checks work
as with torch.optim. A subclass supplies its hyperparameter checks, ``_init_state`` (the state
layout of one parameter), ``_reference_step`` (the update rule in torch.optim's operation order)
and the glue to its fused kernel (``_kernel_state_keys``, ``_launch_kernel``) and to torch's
implementation for other devices (``_torch_step``).
"""

import inspect
import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any, ClassVar

import numba
import numpy as np
import torch
from torch import Tensor

from fastoptim.kernels.memory import QBLOCK
from fastoptim.state import (
    ABSMAX,
    CODES,
    INT8,
    DTensor,
    StateFormat,
    check_state_options,
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
    torch.complex64: np.dtype(np.float32),
    torch.complex128: np.dtype(np.float64),
}
STEP_MARKERS = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
STATE_MARKERS: dict[StateFormat, np.dtype] = {**KERNEL_MARKERS, INT8: np.dtype(np.int8)}
STATE_LAYOUT_OPTIONS = ("state_dtype", "stochastic_rounding")

# The key that marks a state dict keyed by parameter names (``state_dict(named=True)``).
NAMED = "keyed_by_name"

# Numba's default thread pool serves one kernel at a time: Python threads take turns.
KERNEL_LOCK = threading.Lock()


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
    param_addresses: np.ndarray
    strided: list[tuple[int, tuple[int, ...]]]
    kernel_keys: list[str]
    batches: list[LaidOutBatch]


def addresses_of(tensors: list[Tensor]) -> np.ndarray:
    """The ``data_ptr()`` of each tensor (of its local shard for a DTensor), as int64."""
    return np.fromiter((local(t).data_ptr() for t in tensors), np.int64, len(tensors))


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
        return f"its dtype is {param.dtype}; kernels take float32, float64, bfloat16 and complex"
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
    """Param groups, lazy state and ``step()`` shared by the seven optimizers.

    ``step()`` checks every group before it updates any, so a rejected step changes nothing.
    """

    #: Message of the RuntimeError raised for a sparse gradient; None where they are supported.
    sparse_grad_error: ClassVar[str | None] = None

    #: GradScaler hands over ``grad_scale`` and ``found_inf`` instead of unscaling (see step).
    _step_supports_amp_scaling = True

    #: The state buffers ``state_dtype`` applies to, and those of them that are never negative
    #: (kept as unsigned 8-bit codes).
    state_buffers: ClassVar[tuple[str, ...]] = ()
    non_negative_state: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
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
        """Add a group, after checking its compact-state options (see fastoptim.state)."""
        options = {**self.defaults, **param_group}
        check_state_options(options.get("state_dtype"), options.get("stochastic_rounding"))
        check_kernel_for_state(options)
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore pickled or loaded state; options missing from a group take this optimizer's
        values (its constructor's, or the signature's defaults for an older pickle)."""
        super().__setstate__(state)
        self._layouts = {}
        self._state_snapshot = []
        self.__dict__.setdefault("_rounding_seed", torch.initial_seed())
        self.__dict__.setdefault("_rounding_steps", 0)
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
            self._rounding_steps += 1
            for group_index, plan in enumerate(plans):
                calls = self._new_calls(plan) if plan.calls is None else plan.calls
                for call_index, call in enumerate(calls):
                    call.grad_factor = -unscale if plan.group["maximize"] else unscale
                    call.stochastic = plan.group["stochastic_rounding"] is not False
                    call.key = hash(
                        (self._rounding_seed, self._rounding_steps, group_index, call_index)
                    )
                    self._run_kernel(plan.group, call)
                self._step_without_kernel(plan.group, plan.others, inv_scale)
            self._state_snapshot = list(self.state.values())
        return loss

    def _plan(self, group: dict[str, Any], same_states: bool) -> GroupPlan:
        """Check the group's parameters with a gradient and split them between the kernel
        (batches of one dtype) and the other paths. Nothing is changed here. ``same_states``:
        the state table holds the same per-parameter dicts as after the previous step."""
        if same_states and group["fused"] is not False and not group["differentiable"]:
            reused = self._reuse_layout(group)
            if reused is not None:
                return reused
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
        params = layout.params
        laid_out = [local(grad).is_contiguous() for grad in grads]
        for index, stride in layout.strided:
            grad = local(grads[index])
            laid_out[index] = grad.layout is torch.strided and grad.stride() == stride
        if not all(laid_out):
            return None
        for batch in layout.batches:
            for key, row in zip(batch.state_keys, batch.state_tensors, strict=True):
                if not all(map(operator.is_, [state.get(key) for state in batch.states], row)):
                    return None
        if not np.array_equal(addresses_of(params), layout.param_addresses):
            return None
        grad_addresses = addresses_of(grads)
        calls = []
        for batch in layout.batches:
            addresses = batch.call.addresses.copy()
            addresses[1] = grad_addresses[batch.indices]
            calls.append(replace(batch.call, addresses=addresses))
        return GroupPlan(group, params, calls=calls)

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
            rows = [batch.params, [p.grad for p in batch.params], *state_tensors[: len(keys)]]
            addresses = np.stack([addresses_of(row) for row in rows])
            scales = np.zeros_like(addresses)
            scale_rows = iter(state_tensors[len(keys) :])
            for row, q in enumerate(quantized, start=2):
                if q:
                    scales[row] = addresses_of(next(scale_rows))
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
                param_addresses=addresses_of(params),
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
        with KERNEL_LOCK:
            numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
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
        """The state of ``param``, created on first use (in the group's state format)."""
        state = self.state[param]
        if not state:
            self._init_state(param, group, state)
            self._convert_state(param, group, state)
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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of fastoptim or torch.optim. Each group keeps this optimizer's
        ``state_dtype`` and ``stochastic_rounding``; loaded buffers are converted to that format
        (8-bit codes and scales saved by the same format load back exactly). A
        ``state_dict(named=True)`` is matched to the parameters by name."""
        # Only our own marker: torch.distributed.checkpoint passes name-keyed dicts that it
        # has put in this optimizer's order, to be loaded by position.
        if state_dict.get(NAMED):
            state_dict = self._positional(state_dict)
        compact_keys = (CODES, ABSMAX)
        saved = state_dict["state"]
        compact = {
            param_id: {k: v for k, v in s.items() if str(k).endswith(compact_keys)}
            for param_id, s in saved.items()
            if isinstance(s, dict)
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
