"""Shared kernel helpers: raw tensor memory as NumPy views, bfloat16 conversion, chunking.

Kernels receive tensors as int64 addresses (``tensor.data_ptr()``) and element counts, so one
call can cover every tensor of a param group. Storage types are given by a dtype marker:
``float32``, ``float64``, or ``uint16`` for bfloat16 (converted to and from float32 here).
Arithmetic runs in the compute type of the marker: float64 for float64, float32 otherwise.
"""

import os
import types as pytypes
from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# Elements per unit of parallel work: large tensors are split so all threads share them.
CHUNK = 1 << 16

BFLOAT16 = np.dtype(np.uint16)


@intrinsic
def _void_pointer(typingctx, address):  # type: ignore[no-untyped-def]
    """An int64 address as a void pointer."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.int64), codegen


@intrinsic
def _bits_to_float32(typingctx, bits):  # type: ignore[no-untyped-def]
    """Reinterpret uint32 bits as a float32."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _float32_to_bits(typingctx, value):  # type: ignore[no-untyped-def]
    """Reinterpret a float32 as uint32 bits."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@njit(inline="always")
def view(address, size, marker):  # type: ignore[no-untyped-def]
    """The ``size`` elements of storage type ``marker`` at ``address`` as a 1-d array."""
    return carray(_void_pointer(address), (size,), marker)


@njit(inline="always")
def bfloat16_to_float32(bits):  # type: ignore[no-untyped-def]
    """A bfloat16 (uint16 bits) as float32: its bits are the float32's upper half."""
    return _bits_to_float32(np.uint32(bits) << np.uint32(16))


@njit(inline="always")
def float32_to_bfloat16(value):  # type: ignore[no-untyped-def]
    """Round a float32 to the nearest bfloat16 (ties to even), as uint16 bits; NaN stays NaN."""
    bits = _float32_to_bits(value)
    bits += ((bits >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    return np.uint16(0x7FC0) if value != value else np.uint16(bits >> np.uint32(16))


def load(array, index):  # type: ignore[no-untyped-def]
    """Element ``index`` of ``array`` in the compute type."""


@overload(load, inline="always")
def _load(array, index):  # type: ignore[no-untyped-def]
    if array.dtype == types.uint16:
        return lambda array, index: bfloat16_to_float32(array[index])
    return lambda array, index: array[index]


def encode(value, array):  # type: ignore[no-untyped-def]
    """A compute-type ``value`` in the storage type of ``array``, as ``array[i] = encode(v, array)``
    writes it."""


@overload(encode, inline="always")
def _encode(value, array):  # type: ignore[no-untyped-def]
    if array.dtype == types.uint16:
        return lambda value, array: float32_to_bfloat16(value)
    return lambda value, array: value


@njit(inline="always")
def lerp(start, end, weight, one_minus_weight):  # type: ignore[no-untyped-def]
    """``start + weight * (end - start)``, evaluated from the nearer end as torch.lerp does."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * one_minus_weight


@njit(inline="always")
def maximum(a, b):  # type: ignore[no-untyped-def]
    """The larger of ``a`` and ``b``; NaN if either is NaN (as torch.maximum)."""
    if a != a or b != b:
        return a + b
    return a if a > b else b


def compute(value, marker):  # type: ignore[no-untyped-def]
    """A Python float as the compute type of storage type ``marker``."""


@overload(compute, inline="always")
def _compute(value, marker):  # type: ignore[no-untyped-def]
    if marker.dtype == types.float64:
        return lambda value, marker: np.float64(value)
    return lambda value, marker: np.float32(value)


@njit(cache=True)
def chunks_of(sizes):  # type: ignore[no-untyped-def]
    """Split tensors of ``sizes`` elements into (tensor, start, stop) rows of at most CHUNK."""
    count = 0
    for size in sizes:
        count += (size + CHUNK - 1) // CHUNK
    rows = np.empty((count, 3), np.int64)
    row = 0
    for tensor, size in enumerate(sizes):
        for start in range(0, size, CHUNK):
            rows[row, 0] = tensor
            rows[row, 1] = start
            rows[row, 2] = min(start + CHUNK, size)
            row += 1
    return rows


_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


class Kernel:
    """A kernel compiled twice: parallel (Numba's default threading layer, which shares
    torch's OpenMP threads where it can) and serial. A forked child (such as a DataLoader
    worker) runs the serial one, since an OpenMP pool does not survive a fork."""

    def __init__(self, function: Callable[..., Any]) -> None:
        options = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"contract"}}
        self.parallel = njit(parallel=True, **options)(function)
        serial = pytypes.FunctionType(
            function.__code__, function.__globals__, function.__name__ + "_serial"
        )
        serial.__qualname__ = function.__qualname__ + "_serial"  # its own cache entry
        self.serial = njit(**options)(serial)

    def __call__(self, *args: Any) -> None:
        (self.serial if _forked else self.parallel)(*args)


def kernel(function: Callable[..., Any]) -> Kernel:
    """Decorator: compile ``function`` as a :class:`Kernel`."""
    return Kernel(function)
