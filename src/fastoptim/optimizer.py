"""The shared base of fastoptim's optimizers: construction, state and step orchestration.

Every public optimizer derives from :class:`BaseOptimizer`, itself a plain subclass of
``torch.optim.Optimizer``, so schedulers, hooks, ``state_dict`` and ``isinstance`` checks work
as with torch.optim. An algorithm supplies:

- ``declared_state``: its state (fastoptim.state's ``Scalar`` and ``Buffer``), from which the
  base creates, checks, loads and compacts it and lays out its kernel's memory rows;
- ``kernel``: its fused kernel, whose hyperparameters are bound to the group's options by
  name;
- ``check_options``: its value checks, run on the constructor's options and on every param
  group that sets its own;
- ``_torch_step``: torch.optim's own functional implementation of the algorithm where torch
  has one (``fused=False``, and devices other than the CPU), else fastoptim's reference.

Checkpoints live in fastoptim.checkpoint, kernel planning in fastoptim.planning, option checks
in fastoptim.options.
"""

import inspect
import operator
import os
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from fastoptim import checkpoint
from fastoptim.kernels.checks import count_nonfinite
from fastoptim.kernels.memory import Kernel
from fastoptim.options import (
    check_common_options,
    check_option_types,
    checked_init,
    scalar_dtype,
)
from fastoptim.planning import (
    KERNEL_ARGUMENTS,
    GroupLayout,
    GroupPlan,
    KernelCall,
    grad_batch,
    kernel_turn,
    new_calls,
    plan_group,
)
from fastoptim.state import (
    Buffer,
    Declaration,
    Scalar,
    buffers,
    convert_buffer,
    kept_state,
    local,
    scalars,
    state_format,
)


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or infinity and the optimizer was built with nonfinite="raise";
    the step was not taken."""


class BaseOptimizer(torch.optim.Optimizer, metaclass=ABCMeta):
    """Param groups, lazy state and ``step()`` shared by every optimizer.

    ``step()`` checks every group before it updates any, so a rejected step changes nothing.
    """

    #: Message of the RuntimeError raised for a sparse gradient; None where they are supported.
    sparse_grad_error: ClassVar[str | None] = None

    #: GradScaler hands over ``grad_scale`` and ``found_inf`` instead of unscaling (see step).
    _step_supports_amp_scaling = True

    #: The algorithm's state, in order (see fastoptim.state).
    declared_state: ClassVar[Declaration] = ()

    #: The algorithm's fused kernel (fastoptim.kernels.memory.Kernel).
    kernel: ClassVar[Kernel]

    #: Derived from ``kernel``: its arguments besides the common ones, bound to the group's
    #: options of the same names.
    kernel_hyperparameters: ClassVar[tuple[str, ...]] = ()

    #: Derived from ``declared_state``: the buffers ``state_dtype`` applies to, and those of
    #: them that are never negative (kept as unsigned 8-bit codes).
    state_buffers: ClassVar[tuple[str, ...]] = ()
    non_negative_state: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every optimizer's constructor checks its arguments' types first; the names of its
        buffers follow from its declared state, its kernel's hyperparameters from the kernel."""
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = checked_init(cls, cls.__dict__["__init__"])  # type: ignore[method-assign]
        declared = buffers(cls.declared_state)
        cls.state_buffers = tuple(item.name for item in declared)
        cls.non_negative_state = frozenset(item.name for item in declared if item.non_negative)
        kernel = getattr(cls, "kernel", None)
        if kernel is not None:
            cls.kernel_hyperparameters = tuple(
                name for name in kernel.parameters if name not in KERNEL_ARGUMENTS
            )

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        if isinstance(params, torch.nn.Module):
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Tensors, (name, Tensor) "
                f"pairs or param-group dicts, got the module {type(params).__name__}: "
                "pass model.parameters()"
            )
        self._check_options(defaults)
        self.skipped_steps = 0
        self._forget_layouts()
        self._rounding_seed = torch.initial_seed()
        self._rounding_steps = 0
        super().__init__(params, defaults)
        if defaults.get("fused"):
            if defaults["differentiable"]:
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    @staticmethod
    @abstractmethod
    def check_options(options: dict[str, Any]) -> None:
        """Raise torch.optim's errors for invalid hyperparameter values in ``options`` (every
        option of a constructor call, or a group's options merged with the defaults)."""

    def _check_options(self, options: dict[str, Any]) -> None:
        """The algorithm's checks, then those of the options fastoptim adds."""
        self.check_options(options)
        check_common_options(options)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, after checking it: a dict with ``params``, options of the right types
        and values (checked as the constructor checks them), no parameter twice."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(
                f"a param group needs 'params' (its parameters), got only {sorted(param_group)}"
            )
        check_option_types(type(self), param_group)
        own = [
            key
            for key, value in param_group.items()
            if key not in ("params", "param_names") and value is not self.defaults.get(key)
        ]
        if own:
            self._check_options({**self.defaults, **param_group})
        params = param_group["params"]
        if not isinstance(params, (Tensor, set)):
            params = param_group["params"] = list(params)
            tensors = [p[1] if isinstance(p, tuple) else p for p in params]
            if len({id(p) for p in tensors}) != len(tensors):
                raise ValueError("a parameter appears twice in the same param group")
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore pickled or loaded state; options missing from a group take this optimizer's
        values (its constructor's, or the signature's defaults for an older pickle)."""
        super().__setstate__(state)
        self._forget_layouts()
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
        declared_scalars = scalars(self.declared_state)
        for group in self.param_groups:
            for name in self.defaults:
                # A group saved without an option (by torch.optim, or an older fastoptim)
                # takes this optimizer's value: compact state stays as constructed.
                group.setdefault(name, self.defaults[name])
            for param in group["params"]:
                param_state = self.state.get(param, {})
                for item in declared_scalars:
                    value = param_state.get(item.name)
                    if value is not None and not torch.is_tensor(value):
                        param_state[item.name] = self._new_scalar(param, group, float(value))

    def _forget_layouts(self) -> None:
        """Drop the kernel layouts kept between steps: the next step plans every group anew."""
        self._layouts: dict[int, GroupLayout] = {}
        self._state_snapshot: list[dict[str, Any]] = []

    @staticmethod
    def _new_scalar(param: Tensor, group: dict[str, Any], value: float = 0.0) -> Tensor:
        """A per-parameter scalar (``step``, ...) with torch.optim's dtype and device."""
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
            plans = [plan_group(self, group, same_states) for group in self.param_groups]
            if self._has_nonfinite_gradient(plans):
                self.skipped_steps += 1
                return loss
            calls = [new_calls(self, plan) if plan.calls is None else plan.calls for plan in plans]
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
                batches = [grad_batch(batch) for batch in plan.batches]
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

    def _sparse_grad_error(self, group: dict[str, Any]) -> str | None:
        """The RuntimeError message for a sparse gradient in ``group``; None where the
        algorithm accepts them."""
        return self.sparse_grad_error

    def _kernel_options(self, group: dict[str, Any]) -> dict[str, Any]:
        """The group's hyperparameters as the kernel's keyword arguments, bound by name: each
        kernel argument besides the common ones (``KernelCall.arguments``) is the group's
        option of that name (``beta1`` and ``beta2``: its ``betas``), numbers as floats."""
        betas = dict(zip(("beta1", "beta2"), group.get("betas", ()), strict=False))
        options = {}
        for name in self.kernel_hyperparameters:
            value = betas[name] if name in betas else group[name]
            options[name] = value if isinstance(value, bool) else float(value)
        return options

    def _run_kernel(self, group: dict[str, Any], call: KernelCall) -> None:
        """Run one fused kernel call on as many threads as torch uses."""
        with kernel_turn():
            self.kernel(**call.arguments, **self._kernel_options(group))

    def _step_without_kernel(
        self, group: dict[str, Any], params: list[Tensor], inv_scale: Tensor | None
    ) -> None:
        """Update ``params`` with torch's implementation (the reference where torch has
        none), their gradients unscaled first under GradScaler."""
        grads = [p.grad if inv_scale is None else p.grad * inv_scale.to(p.device) for p in params]
        self._torch_step(group, params, grads)

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

    def _init_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Fill the empty ``state`` of ``param`` as declared: scalars at their initial values,
        the group's buffers at zero."""
        for item in self.declared_state:
            if isinstance(item, Scalar):
                state[item.name] = self._new_scalar(param, group, item.initial)
            elif isinstance(item, Buffer) and item.kept(group):
                state[item.name] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def _convert_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Keep ``param``'s buffers in the format its group's ``state_dtype`` asks for, and,
        where the kernel may update it, every scalar in the first one's dtype: torch.optim's
        ``load_state_dict`` casts all state but ``step`` to the parameter's dtype (a second
        scalar of a float64 parameter would become float64), and a kernel call takes one
        scalar dtype. ``fused=False`` keeps torch's cast, as torch.optim does."""
        target = state_format(param, group["state_dtype"])
        for key in self.state_buffers:
            convert_buffer(state, key, target, signed=key not in self.non_negative_state)
        if group["fused"] is False or group["differentiable"]:
            return
        first, *others = [item.name for item in scalars(self.declared_state)] or [None]
        if isinstance(state.get(first), Tensor):
            for name in others:
                if isinstance(state.get(name), Tensor):
                    state[name] = state[name].to(state[first].dtype)

    def _kernel_state_keys(self, group: dict[str, Any]) -> list[str]:
        """The state the fused kernel reads and writes for ``group``'s parameters."""
        return kept_state(self.declared_state, group)

    def state_dict(self, named: bool = False) -> dict[str, Any]:  # type: ignore[override]
        """torch.optim's state dict, plus ``"rounding"``: where the random stream of stochastic
        rounding stands (seed and steps), so a resumed run rounds as an uninterrupted one.

        ``named=True`` keys the state and each group's ``params`` by parameter name instead
        of position (and sets ``"keyed_by_name"``), so the checkpoint survives a reordering of
        parameters. The names are those the optimizer was built with
        (``model.named_parameters()``, or ``fastoptim.create_optimizer``); ``ValueError`` if it
        has none.
        """
        return checkpoint.state_dict_of(self, named)

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
        checkpoint.load_state_dict_into(self, state_dict)

    @abstractmethod
    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Update ``params`` with ``grads`` by torch.optim's functional implementation of
        the algorithm (its for-loop or foreach form, as the group asks)."""
