"""Side-by-side runs of a fastoptim optimizer and its torch.optim counterpart."""

from typing import Any

import torch
from optim_db import DB

SHAPES = [(), (7,), (4, 5), "non-contiguous"]
STEPS = 20


def make_params(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Parameters of several shapes: 0-d, 1-d, 2-d and a non-contiguous 2-d leaf."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in SHAPES:
        if shape == "non-contiguous":
            tensor = torch.randn(5, 3, generator=generator, dtype=dtype).t()
            assert not tensor.is_contiguous()
        else:
            tensor = torch.randn(shape, generator=generator, dtype=dtype)
        params.append(tensor)
    return params


def leaf_copies(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Independent leaf copies that keep each tensor's strides."""
    copies = []
    for param in params:
        copy = torch.empty_strided(param.shape, param.stride(), dtype=param.dtype)
        copy.copy_(param)
        copies.append(copy.requires_grad_())
    return copies


def assert_same_state(ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer) -> None:
    """Every parameter and state tensor bit-equal, with the same keys, dtypes and shapes."""
    for group_a, group_b in zip(ours.param_groups, theirs.param_groups, strict=True):
        for param_a, param_b in zip(group_a["params"], group_b["params"], strict=True):
            assert torch.equal(param_a, param_b), "parameters differ"
            state_a, state_b = ours.state.get(param_a, {}), theirs.state.get(param_b, {})
            assert state_a.keys() == state_b.keys()
            for key, value_b in state_b.items():
                value_a = state_a[key]
                if value_b is None:
                    assert value_a is None
                    continue
                assert value_a.dtype == value_b.dtype, key
                assert value_a.shape == value_b.shape, key
                assert value_a.device == value_b.device, key
                assert value_a.is_sparse == value_b.is_sparse, key
                if value_b.is_sparse:
                    value_a, value_b = value_a.to_dense(), value_b.to_dense()
                assert torch.equal(value_a, value_b), f"state {key!r} differs"
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()


def make_pair(
    name: str,
    options: dict[str, Any],
    dtype: torch.dtype,
    second_group: dict[str, Any] | None = None,
    seed: int = 0,
    ours_only: dict[str, Any] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The same parameters in a fastoptim optimizer and its reference (``optim_db``: torch.optim's
    class unless the case names another), two groups if asked.

    ``ours_only`` adds options given to the fastoptim optimizer alone; it runs the bit-exact
    reference path (``fused=False``) unless they say otherwise.
    """
    case = DB[name]
    base = make_params(dtype, seed)
    optimizers = []
    for cls, extra in ((case.cls, {"fused": False, **(ours_only or {})}), (case.reference, {})):
        params = leaf_copies(base)
        if second_group is None:
            groups: Any = params
        else:
            groups = [{"params": params[:2]}, {"params": params[2:], **second_group}]
        optimizers.append(cls(groups, **options, **extra))
    return optimizers[0], optimizers[1]


def step_pair(
    ours: torch.optim.Optimizer,
    theirs: torch.optim.Optimizer,
    steps: int = STEPS,
    seed: int = 1,
    skip_some: bool = True,
) -> None:
    """Step both optimizers on identical gradients, checking equality after every step.

    With ``skip_some``, a rotating parameter has no gradient on each step (so one parameter
    also gets its first gradient only on step 2).
    """
    generator = torch.Generator().manual_seed(seed)
    params_a = [p for group in ours.param_groups for p in group["params"]]
    params_b = [p for group in theirs.param_groups for p in group["params"]]
    for step in range(steps):
        for index, (param_a, param_b) in enumerate(zip(params_a, params_b, strict=True)):
            if skip_some and (step + index) % 4 == 3:
                param_a.grad = param_b.grad = None
                continue
            grad = torch.randn(param_a.shape, generator=generator, dtype=param_a.dtype)
            param_a.grad, param_b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        assert_same_state(ours, theirs)
