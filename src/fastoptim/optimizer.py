"""The shared base of fastoptim's optimizers: stepping, state creation and option checks.

Every public optimizer derives from :class:`BaseOptimizer`, itself a plain subclass of
``torch.optim.Optimizer``, so schedulers, hooks, ``state_dict`` and ``isinstance`` checks work
as with torch.optim. A subclass supplies its hyperparameter checks, ``_init_state`` (the state
layout of one parameter) and ``_update_group`` (the update rule).
"""

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

# Device types on which torch's optimizers accept ``capturable=True``.
CAPTURABLE_DEVICES = ["cuda", "xpu", "hpu", "privateuseone", "xla"]


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


class BaseOptimizer(torch.optim.Optimizer):
    """Param groups, lazy state and ``step()`` shared by the seven optimizers.

    ``step()`` checks every group before it updates any, so a rejected step changes nothing.
    """

    #: Message of the RuntimeError raised for a sparse gradient; None where they are supported.
    sparse_grad_error: ClassVar[str | None] = None

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        if defaults.get("fused"):
            if defaults["differentiable"]:
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore pickled or loaded state; options missing from a group take their defaults."""
        super().__setstate__(state)
        signature_defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(type(self).__init__).parameters.items()
        }
        for group in self.param_groups:
            for name in self.defaults:
                group.setdefault(name, signature_defaults.get(name))
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
        """Perform one optimization step; return the loss of ``closure`` if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            work = [(group, self._params_with_grad(group)) for group in self.param_groups]
            for group, params in work:
                if params:
                    self._update_group(group, params)
        return loss

    def _params_with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        """The group's parameters that have a gradient, after checking that they can be stepped."""
        params = [p for p in group["params"] if p.grad is not None]
        if self.sparse_grad_error is not None and any(p.grad.is_sparse for p in params):
            raise RuntimeError(self.sparse_grad_error)
        if group.get("capturable") and any(p.device.type not in CAPTURABLE_DEVICES for p in params):
            raise AssertionError(
                "If capturable=True, params and state_steps must be on supported devices: "
                f"{CAPTURABLE_DEVICES}."
            )
        return params

    def _state_of(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """The state of ``param``, created on first use."""
        state = self.state[param]
        if not state:
            self._init_state(param, group, state)
        return state

    def _init_state(self, param: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        """Fill the empty ``state`` of ``param`` with the optimizer's initial buffers."""
        raise NotImplementedError

    def _update_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Apply one update to ``params`` (all with a gradient) using the group's options."""
        raise NotImplementedError
