"""SGD: stochastic gradient descent with optional (Nesterov) momentum."""

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT
from torch.optim.sgd import sgd as torch_sgd

from fastoptim.kernels.sgd import sgd_kernel
from fastoptim.optimizer import BaseOptimizer
from fastoptim.options import check_lr, check_non_negative
from fastoptim.state import Buffer


class SGD(BaseOptimizer):
    """SGD, a drop-in for ``torch.optim.SGD``. Sparse gradients are accepted.

    With gradient ``g`` at step ``t``::

        g = g + wd * p
        b = g                                   (t = 1)
        b = momentum * b + (1 - dampening) * g  (t > 1)
        g = g + momentum * b  (nesterov)   or   g = b
        p = p - lr * g

    The momentum buffer ``b`` exists only when ``momentum != 0`` (the kernel creates it as zeros
    marked fresh, and sets it to the first gradient); SGD keeps no ``step``.
    """

    kernel = sgd_kernel
    declared_state = (Buffer("momentum_buffer", when="momentum"),)

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool | None = None,
        nonfinite: str | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
            "state_dtype": state_dtype,
            "stochastic_rounding": stochastic_rounding,
            "nonfinite": nonfinite,
        }
        super().__init__(params, defaults)

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        momentum, dampening = options["momentum"], options["dampening"]
        check_lr(options["lr"])
        check_non_negative(momentum, "momentum value")
        check_non_negative(options["weight_decay"], "weight_decay value")
        if options["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _torch_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        with_momentum = group["momentum"] != 0
        buffers = [self.state.get(p, {}).get("momentum_buffer") for p in params]
        torch_sgd(
            params,
            grads,
            buffers,
            has_sparse_grad=any(g.is_sparse for g in grads),
            foreach=group["foreach"],
            fused=group["fused"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )
        if with_momentum:
            for param, buffer in zip(params, buffers, strict=True):
                self.state[param]["momentum_buffer"] = buffer
