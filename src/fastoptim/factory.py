"""``create_optimizer``: an optimizer by name, with the parameter groups people otherwise write
by hand (no weight decay on biases and normalization weights, layer-wise lr decay), and the
registry of the optimizers and their defaults."""

import fnmatch
import inspect
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from fastoptim.catalog import OPTIMIZERS, info
from fastoptim.optimizer import BaseOptimizer

# Parameters that get no weight decay by default: biases and normalization weights, which are
# the one-dimensional parameters (and anything named like a bias).
DEFAULT_NO_DECAY = ("*bias",)


def registry() -> dict[str, dict[str, Any]]:
    """Each optimizer's class name and its constructor's defaults (``params`` left out)."""
    return {
        cls.__name__: {
            name: parameter.default
            for name, parameter in inspect.signature(cls).parameters.items()
            if name != "params"
        }
        for cls in (entry.cls for entry in OPTIMIZERS)
    }


def optimizer_class(name: str) -> type[BaseOptimizer]:
    """The optimizer class called ``name`` (case-insensitive); ``ValueError`` listing the
    valid names otherwise."""
    return info(name).cls


def named_parameters(model_or_params: Any) -> list[tuple[str, Tensor]]:
    """(name, parameter) pairs of a module (trainable ones only), of (name, parameter) pairs,
    or of plain tensors (named by position: "0", "1", ...)."""
    if isinstance(model_or_params, nn.Module):
        return [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
    if isinstance(model_or_params, Tensor):
        raise TypeError(
            "create_optimizer takes a module or an iterable of parameters, got a single Tensor"
        )
    items = list(model_or_params)
    if all(isinstance(item, tuple) and len(item) == 2 for item in items):
        return [(str(name), param) for name, param in items]
    if not all(isinstance(item, Tensor) for item in items):
        raise TypeError(
            "create_optimizer takes a module, (name, parameter) pairs or tensors; "
            "for hand-made parameter groups construct the optimizer class directly"
        )
    return [(str(index), param) for index, param in enumerate(items)]


def decays(name: str, param: Tensor, no_decay: Sequence[str]) -> bool:
    """Whether ``param`` gets weight decay: not if it is one-dimensional (biases and
    normalization weights) or its name matches one of the ``no_decay`` glob patterns."""
    return param.dim() > 1 and not any(fnmatch.fnmatchcase(name, p) for p in no_decay)


def layer_of(name: str, layers: list[str]) -> int:
    """The index of the top-level module (in ``layers``) that parameter ``name`` belongs to;
    parameters of the model itself count as the last layer."""
    head = name.split(".", 1)[0]
    return layers.index(head) if head in layers and "." in name else len(layers) - 1


def create_optimizer(
    model_or_params: nn.Module | Iterable[Any],
    name: str,
    lr: float | None = None,
    weight_decay: float | None = None,
    *,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    layer_decay: float | None = None,
    **options: Any,
) -> BaseOptimizer:
    """fastoptim's optimizer ``name`` (case-insensitive) over ``model_or_params``.

    With weight decay (given, or the optimizer's default such as AdamW's 1e-2), parameters are
    split into a group with decay and one without: one-dimensional parameters (biases,
    normalization weights) and those whose names match a ``no_decay`` glob pattern (default:
    ``"*bias"``) get none. ``layer_decay`` (in (0, 1]) scales the lr of a model's top-level
    child ``i`` of ``n`` by ``layer_decay ** (n - 1 - i)``: the last (the head) trains at
    ``lr``, earlier layers slower. ``options`` go to the optimizer's constructor. Parameters
    are passed with their names, so ``state_dict(named=True)`` works. Raises ``ValueError``
    listing what is valid for an unknown name or option, or a bad ``layer_decay``.
    """
    cls = optimizer_class(name)
    signature = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(signature))
    if unknown:
        valid = ", ".join(n for n in signature if n != "params")
        given = ", ".join(map(repr, unknown))
        raise ValueError(f"unknown option {given} for {cls.__name__}: choose from {valid}")
    if layer_decay is not None and not (
        isinstance(layer_decay, (int, float)) and 0 < layer_decay <= 1
    ):
        raise ValueError(f"invalid layer_decay {layer_decay!r}: expected a number in (0, 1]")
    if isinstance(no_decay, str):
        raise TypeError(f"no_decay must be a sequence of patterns, got the string {no_decay!r}")
    named = named_parameters(model_or_params)
    if not named:
        raise ValueError("create_optimizer got no trainable parameters")
    if lr is not None:
        options["lr"] = lr
    base_lr = options.get("lr", signature["lr"].default)
    decay = signature["weight_decay"].default if weight_decay is None else weight_decay
    layers: list[str] = []
    if layer_decay is not None and isinstance(model_or_params, nn.Module):
        layers = [
            n
            for n, child in model_or_params.named_children()
            if next(child.parameters(), None) is not None
        ]
        if any("." not in n for n, _ in named):
            layers.append("")  # the model's own parameters: trained at the full lr
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for param_name, param in named:
        with_decay = decay != 0 and decays(param_name, param, no_decay)
        layer = layer_of(param_name, layers) if layers else 0
        group = groups.get((with_decay, layer))
        if group is None:
            group = groups[(with_decay, layer)] = {"params": [], "weight_decay": 0.0}
            if with_decay:
                group["weight_decay"] = decay
            if layers:
                group["lr"] = base_lr * layer_decay ** (len(layers) - 1 - layer)
        group["params"].append((param_name, param))
    options["weight_decay"] = decay
    ordered = [groups[key] for key in sorted(groups, key=lambda key: (key[1], not key[0]))]
    return cls(ordered, **options)
