"""Optimizer state: what each algorithm declares it keeps, and the compact forms of its buffers.

An algorithm declares its state as a tuple of :class:`Scalar` (per-parameter 0-d tensors such as
``step``) and :class:`Buffer` (parameter-shaped tensors); creation, ``state_dict`` checks,
loading, compact state and the kernels' memory rows all follow the declaration.

``state_dtype`` chooses how an optimizer keeps its buffers (exp_avg, square_avg, ...):

- ``None``: in the parameter's dtype, as torch.optim does.
- ``torch.float32`` or ``torch.bfloat16``: in that dtype.
- ``"int8"``: for parameters of at least ``QUANTIZED_MIN_ELEMENTS`` elements, each buffer
  ``key`` becomes ``key + "_codes"`` (8-bit codes shaped like the parameter: int8 for signed
  buffers, uint8 for non-negative ones) and ``key + "_absmax"`` (one float32 scale per block of
  256 elements). Smaller parameters keep full precision: float32 (or float64 for float64
  parameters).

Complex parameters always keep their state in their own dtype. The step counter is never
compacted. See fastoptim.kernels.memory for the 8-bit code.
"""

from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from fastoptim.kernels.formats import QBLOCK, dequantize, quantize

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed support
    DTensor = None  # type: ignore[assignment,misc]

INT8 = "int8"
QUANTIZED_MIN_ELEMENTS = 4096
CODES, ABSMAX = "_codes", "_absmax"
STATE_DTYPES = (None, torch.float32, torch.bfloat16, INT8)

StateFormat = torch.dtype | str


@dataclass(frozen=True)
class Scalar:
    """A per-parameter 0-d float tensor (``step``, a running product of momentum coefficients,
    ...), made as torch.optim makes ``step``; it starts at ``initial``. Never compacted."""

    name: str
    initial: float = 0.0


@dataclass(frozen=True)
class Buffer:
    """A parameter-shaped state tensor, kept in the group's state format and starting at zero.
    ``non_negative`` buffers take unsigned 8-bit codes; with ``when`` set, the buffer exists
    only in groups where that option is set (non-zero, True)."""

    name: str
    non_negative: bool = False
    when: str | None = None

    def kept(self, group: dict[str, Any]) -> bool:
        """Whether a parameter of ``group`` keeps this buffer."""
        return self.when is None or bool(group[self.when])


Declaration = tuple[Scalar | Buffer, ...]


def scalars(declaration: Declaration) -> list[Scalar]:
    """The declared per-parameter scalars."""
    return [item for item in declaration if isinstance(item, Scalar)]


def buffers(declaration: Declaration) -> list[Buffer]:
    """The declared parameter-shaped buffers."""
    return [item for item in declaration if isinstance(item, Buffer)]


def kept_state(declaration: Declaration, group: dict[str, Any]) -> list[str]:
    """The names of the state a parameter of ``group`` keeps, in declaration order."""
    return [item.name for item in declaration if not isinstance(item, Buffer) or item.kept(group)]


def stored_names(declaration: Declaration) -> set[str]:
    """Every key a parameter's state may hold: scalars, buffers, and buffers' 8-bit forms."""
    names = {item.name for item in declaration}
    return names | {b.name + suffix for b in buffers(declaration) for suffix in (CODES, ABSMAX)}


def check_state_dtype(state_dtype: Any) -> None:
    """Raise ValueError unless ``state_dtype`` is one of STATE_DTYPES. (Its type, and
    ``stochastic_rounding``'s, are checked with every option's: fastoptim.optimizer.)"""
    if not any(state_dtype is allowed or state_dtype == allowed for allowed in STATE_DTYPES):
        raise ValueError(
            "state_dtype must be None, torch.float32, torch.bfloat16 or 'int8', "
            f"got {state_dtype!r}"
        )


def state_format(param: Tensor, state_dtype: torch.dtype | str | None) -> StateFormat:
    """How the buffers of ``param`` are kept under ``state_dtype``: a dtype, or INT8."""
    if state_dtype is None or param.is_complex():
        return param.dtype
    if state_dtype == INT8:
        if param.numel() >= QUANTIZED_MIN_ELEMENTS:
            return INT8
        return torch.float64 if param.dtype == torch.float64 else torch.float32
    return state_dtype


def local(tensor: Tensor) -> Tensor:
    """The memory this process updates: a DTensor's local shard (FSDP2 parameters, their
    gradients and state), or the tensor itself."""
    return tensor.to_local() if DTensor is not None and isinstance(tensor, DTensor) else tensor


def like(values: Tensor, model: Tensor) -> Tensor:
    """Local ``values`` as a tensor distributed as ``model`` is (a DTensor with its mesh,
    placements, shape and strides), or ``values`` when ``model`` is a plain tensor."""
    if DTensor is None or not isinstance(model, DTensor):
        return values
    return DTensor.from_local(
        values,
        model.device_mesh,
        model.placements,
        run_check=False,
        shape=model.shape,
        stride=model.stride(),
    )


def memory_order(tensor: Tensor) -> Tensor:
    """A dense tensor's elements as a 1-d view, in the order they lie in memory."""
    return tensor.as_strided((tensor.numel(),), (1,))


def quantize_like(values: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """``values`` as 8-bit codes (same shape and strides) and float32 block scales. For a
    DTensor, each process quantizes its shard: the codes are a DTensor like ``values``, the
    scales a plain tensor of the shard's blocks."""
    shard = local(values)
    codes = torch.empty_like(shard, dtype=torch.int8 if signed else torch.uint8)
    scales = torch.empty((shard.numel() + QBLOCK - 1) // QBLOCK, dtype=torch.float32)
    flat = memory_order(shard).float().contiguous()
    quantize(flat.numpy(), memory_order(codes).numpy(), scales.numpy())
    return like(codes, values), scales


def dequantize_like(codes: Tensor, scales: Tensor) -> Tensor:
    """The float32 values of 8-bit ``codes`` and their block ``scales`` (distributed as the
    codes are)."""
    shard = local(codes)
    values = torch.empty_like(shard, dtype=torch.float32)
    dequantize(
        memory_order(shard.cpu()).numpy(),
        local(scales).cpu().numpy(),
        memory_order(values).numpy(),
    )
    return like(values.to(shard.device), codes)


def convert_buffer(state: dict[str, Any], key: str, target: StateFormat, signed: bool) -> None:
    """Keep buffer ``key`` of ``state`` in format ``target``, converting it in place."""
    if key + CODES in state:
        if target != INT8:
            values = dequantize_like(state.pop(key + CODES), state.pop(key + ABSMAX))
            state[key] = values.to(target)
    elif key in state:
        if target == INT8:
            state[key + CODES], state[key + ABSMAX] = quantize_like(state.pop(key), signed)
        elif state[key].dtype != target:
            state[key] = state[key].to(target)


def full_precision_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of a fastoptim ``state_dict`` in torch.optim's layout: 8-bit and bfloat16
    buffers become float32 tensors, and the compact-state options leave the param groups (and
    the stochastic rounding position leaves the dict).

    torch.optim (which casts buffers to each parameter's dtype when it loads) or fastoptim with
    any ``state_dtype`` can load the result.
    """
    state = {}
    for param_id, param_state in state_dict["state"].items():
        param_state = dict(param_state)
        keys = [key[: -len(CODES)] for key in param_state if str(key).endswith(CODES)]
        for key in chain(keys, [k for k, v in param_state.items() if _is_bfloat16(v)]):
            convert_buffer(param_state, key, torch.float32, signed=True)
        state[param_id] = param_state
    groups = [
        {k: v for k, v in group.items() if k not in ("state_dtype", "stochastic_rounding")}
        for group in state_dict["param_groups"]
    ]
    rest = {k: v for k, v in state_dict.items() if k != "rounding"}
    return {**rest, "state": state, "param_groups": groups}


def _is_bfloat16(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dtype == torch.bfloat16


def state_nbytes(tensors: Any) -> int:
    """Bytes held by the tensors among ``tensors`` (a state dict's values)."""
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))
