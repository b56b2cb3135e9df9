"""Shared kernel helpers: raw tensor memory as buffers, opened, loaded, written and finished
in any storage format, chunking for threads, and the Kernel wrapper.

Kernels receive tensors as int64 addresses (``tensor.data_ptr()``) and element counts, so one
call can cover every tensor of a param group. Storage types are given by a dtype marker:
``float32``, ``float64``, ``uint16`` for bfloat16, ``int16`` for float16 (Numba has no float16
arrays on the CPU), or ``int8`` for blockwise 8-bit codes. Arithmetic runs in the compute type
of the parameters' marker: float64 for float64, float32 otherwise.

A kernel opens each tensor's block of elements with ``open_buffer`` as a source, read with
``load(source, i)``, and with ``open_sink(source, scratch)`` as the array it writes to with
``put(sink, i, value, source)``; it ends the block with ``finish(source, sink)``:

- float32/float64: source and sink are the same array view; ``finish`` does nothing.
- float16: source and sink are the same view of its bits; ``load`` widens to float32 and
  ``put`` rounds to nearest (ties to even), always: stochastic rounding is for bfloat16 only,
  as torch's fused kernels round float16 to nearest.
- bfloat16: the source is ``Rounded`` and the sink its bits; ``put`` rounds to bfloat16: to
  nearest (ties to even) or, with ``stochastic``, up or down with probabilities given by the
  distance (unbiased).
- 8-bit: the source is ``Quantized``: a block of at most ``QBLOCK`` codes and the block's
  scale; ``finish`` rescales the block and encodes the values staged in the sink.

The encodings themselves are in fastoptim.kernels.formats. Random bits for stochastic rounding
come from a hash of (call key, tensor, buffer row, element index): reproducible, independent
of the thread count, and independent between elements (tested). Each rounding takes 16 of a
hash's 32 bits: bfloat16 buffers in rows 2k-1 and 2k share one hash per element, and code i of
an 8-bit block shares one with code i + half the block.
"""

import inspect
import os
import types as pytypes
import warnings
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.core.errors import NumbaIRAssumptionWarning
from numba.extending import intrinsic, overload

from fastoptim.kernels.formats import (
    QBLOCK,
    _bits_to_float32,
    _magnitude_bits,
    bfloat16_to_float32,
    block_scale,
    decode,
    encode_code,
    float16_to_float32,
    random_bits,
    round_to_bfloat16,
    round_to_float16,
)

# Elements per unit of parallel work: large tensors are split so all threads share them;
# a multiple of QBLOCK.
CHUNK = 1 << 16

Rounded = namedtuple("Rounded", ["bits", "key", "offset", "shift", "stochastic"])
Quantized = namedtuple("Quantized", ["codes", "scale", "key", "offset", "stochastic"])


@intrinsic
def _void_pointer(typingctx, address):  # type: ignore[no-untyped-def]
    """An int64 address as a void pointer."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.int64), codegen


@njit(inline="always")
def view(address, size, marker):  # type: ignore[no-untyped-def]
    """The ``size`` elements of storage type ``marker`` at ``address`` as a 1-d array."""
    return carray(_void_pointer(address), (size,), marker)


def open_buffer(memory, row, tensor, first, last, marker):  # type: ignore[no-untyped-def]
    """Elements ``first:last`` of the tensor in column ``tensor``, row ``row`` of a kernel's
    ``memory`` (addresses, 8-bit scale addresses, random key, stochastic rounding) in storage
    type ``marker``, as a source: read element i with ``load(source, i)``."""


@overload(open_buffer, inline="always")
def _open_buffer(memory, row, tensor, first, last, marker):  # type: ignore[no-untyped-def]
    if marker.dtype in (types.int8, types.uint8):

        def quantized(memory, row, tensor, first, last, marker):  # type: ignore[no-untyped-def]
            addresses, scales, key, stochastic = memory
            codes = view(addresses[row, tensor], last, marker)[first:last]
            scale = view(scales[row, tensor] + (first // QBLOCK) * 4, 1, np.float32)
            tensor_key = random_bits(key, 0, tensor * 0x10001 + row * 0x1000193)
            return Quantized(codes, scale, tensor_key, first, stochastic)

        return quantized
    if marker.dtype == types.uint16:

        def rounded(memory, row, tensor, first, last, marker):  # type: ignore[no-untyped-def]
            addresses, _, key, stochastic = memory
            bits = view(addresses[row, tensor], last, marker)[first:last]
            # Rows 2k-1 and 2k share a hash per element (its low and high 16 bits).
            pair = (row + 1) // 2
            tensor_key = random_bits(key, 0, tensor * 0x10001 + pair * 0x1000193 + 0x7F4A7C15)
            return Rounded(bits, tensor_key, first, np.uint32(16 * (row % 2)), stochastic)

        return rounded
    return lambda memory, row, tensor, first, last, marker: view(
        memory[0][row, tensor], last, marker
    )[first:last]


def open_sink(source, scratch):  # type: ignore[no-untyped-def]
    """Where a kernel ``put``s the new values of an opened block: the block itself for
    float32, float64, bfloat16 and float16, else the start of ``scratch`` (float32, QBLOCK
    long) for ``finish`` to encode into the 8-bit source."""


@overload(open_sink, inline="always")
def _open_sink(source, scratch):  # type: ignore[no-untyped-def]
    if isinstance(source, types.BaseNamedTuple) and source.instance_class is Quantized:
        return lambda source, scratch: scratch[: source.codes.size]
    if isinstance(source, types.BaseNamedTuple) and source.instance_class is Rounded:
        return lambda source, scratch: source.bits
    return lambda source, scratch: source


def put(sink, index, value, source):  # type: ignore[no-untyped-def]
    """Write the new compute-type ``value`` of element ``index`` to ``sink`` (from
    ``open_sink(source, ...)``): as is, rounded to bfloat16 for a ``Rounded`` source, or
    rounded to nearest float16 for float16 bits (int16)."""


@overload(put, inline="always")
def _put(sink, index, value, source):  # type: ignore[no-untyped-def]
    if isinstance(source, types.BaseNamedTuple) and source.instance_class is Rounded:

        def rounded(sink, index, value, source):  # type: ignore[no-untyped-def]
            bits = random_bits(source.key, source.offset, index) >> source.shift
            sink[index] = round_to_bfloat16(value, source.stochastic, bits)

        return rounded
    if isinstance(sink, types.Array) and sink.dtype == types.int16:

        def half(sink, index, value, source):  # type: ignore[no-untyped-def]
            sink[index] = round_to_float16(value)

        return half

    def plain(sink, index, value, source):  # type: ignore[no-untyped-def]
        sink[index] = value

    return plain


def scratch_for(state_marker, rows):  # type: ignore[no-untyped-def]
    """One float32 sink of QBLOCK values per memory row of ``rows`` (index it by row name)
    for a kernel with 8-bit state; a token array otherwise."""


@overload(scratch_for, inline="always")
def _scratch_for(state_marker, rows):  # type: ignore[no-untyped-def]
    if state_marker.dtype == types.int8:
        return lambda state_marker, rows: np.empty((len(rows), QBLOCK), np.float32)
    return lambda state_marker, rows: np.empty((len(rows), 0), np.float32)


def unsigned(marker):  # type: ignore[no-untyped-def]
    """The marker for non-negative state: uint8 codes for 8-bit state, else ``marker``."""


@overload(unsigned, inline="always")
def _unsigned(marker):  # type: ignore[no-untyped-def]
    if marker.dtype == types.int8:
        return lambda marker: np.uint8
    return lambda marker: marker


def block_size(marker, state_marker):  # type: ignore[no-untyped-def]
    """Elements a kernel handles between ``finish`` calls: QBLOCK for 8-bit state (whose new
    values are staged in a small float32 sink), else CHUNK."""


@overload(block_size, inline="always")
def _block_size(marker, state_marker):  # type: ignore[no-untyped-def]
    if state_marker.dtype == types.int8:
        return lambda marker, state_marker: QBLOCK
    return lambda marker, state_marker: CHUNK


def finish(source, sink):  # type: ignore[no-untyped-def]
    """End a block: encode the values staged in ``sink`` into an 8-bit ``source``."""


# Not inlined at Numba level: an inlined function that writes through a namedtuple member
# loses the write (Numba 0.68).
@overload(finish)
def _finish(source, sink):  # type: ignore[no-untyped-def]
    if isinstance(source, types.BaseNamedTuple) and source.instance_class is Quantized:

        def quantize_block(source, sink):  # type: ignore[no-untyped-def]
            codes = source.codes
            largest = np.int32(0)
            for i in range(sink.size):
                magnitude = _magnitude_bits(sink[i])
                largest = magnitude if magnitude > largest else largest
            scale = block_scale(_bits_to_float32(np.uint32(largest)))
            source.scale[0] = scale
            inverse = np.float32(1.0) / scale if scale > 0 else np.float32(1.0)  # exact
            if not source.stochastic:
                for i in range(sink.size):
                    codes[i] = encode_code(sink[i] * inverse, codes, False, np.uint32(0))
                return
            # Elements i and i + half share a hash: its low and high 16 bits.
            half = sink.size // 2
            for i in range(half):
                bits = random_bits(source.key, source.offset, i)
                low, high = bits << np.uint32(16), bits & np.uint32(0xFFFF0000)
                codes[i] = encode_code(sink[i] * inverse, codes, True, low)
                codes[i + half] = encode_code(sink[i + half] * inverse, codes, True, high)
            if sink.size % 2:
                last = sink.size - 1
                bits = random_bits(source.key, source.offset, last)
                codes[last] = encode_code(sink[last] * inverse, codes, True, bits)

        return quantize_block
    return lambda source, sink: None


def load(array, index):  # type: ignore[no-untyped-def]
    """Element ``index`` of ``array`` in the compute type."""


@overload(load, inline="always")
def _load(array, index):  # type: ignore[no-untyped-def]
    if isinstance(array, types.BaseNamedTuple) and array.instance_class is Quantized:
        return lambda array, index: decode(array.codes[index]) * array.scale[0]
    if isinstance(array, types.BaseNamedTuple) and array.instance_class is Rounded:
        return lambda array, index: bfloat16_to_float32(array.bits[index])
    if array.dtype == types.uint16:
        return lambda array, index: bfloat16_to_float32(array[index])
    if array.dtype == types.int16:
        return lambda array, index: float16_to_float32(array[index])
    return lambda array, index: array[index]


@njit(inline="always")
def decayed_grad(param, grad, i, factor, l2, decay):  # type: ignore[no-untyped-def]
    """Element ``i``'s (param, gradient): g = grad * factor, then g + decay * p with L2."""
    g = load(grad, i) * factor
    p = load(param, i)
    return p, g + decay * p if l2 else g


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


# Compiling a kernel, Numba's internal SSA check reports variables of the inlined rounding
# helpers (``put``, ``encode_code``) as out of scope: a pedantic check, not an error, printed
# dozens of times on a user's first step. Only those reports are hidden.
warnings.filterwarnings(
    "ignore",
    message=r"variable '_(put|encode_code)__locals__",
    category=NumbaIRAssumptionWarning,
)

_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def memory_rows(*state: str) -> Any:
    """The rows of a kernel's ``memory`` by name: ``param`` (0), ``grad`` (1), then the
    ``state`` tensors in order. A kernel reads ``ROW.exp_avg`` (a compile-time constant);
    the optimizer lays each state tensor's addresses out in the row of its name."""
    return namedtuple("Rows", ["param", "grad", *state])(*range(2 + len(state)))


class Kernel:
    """A kernel compiled twice: parallel (Numba's default threading layer, which shares
    torch's OpenMP threads where it can) and serial. A forked child (such as a DataLoader
    worker) runs the serial one, since an OpenMP pool does not survive a fork. ``rows``
    names its memory rows (:func:`memory_rows`), ``parameters`` its arguments' names; it is
    called with keyword arguments."""

    def __init__(self, function: Callable[..., Any], rows: Any) -> None:
        options = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"contract"}}
        self.rows = rows
        self.parameters = tuple(inspect.signature(function).parameters)
        self.parallel = njit(parallel=True, **options)(function)
        serial = pytypes.FunctionType(
            function.__code__, function.__globals__, function.__name__ + "_serial"
        )
        serial.__qualname__ = function.__qualname__ + "_serial"  # its own cache entry
        self.serial = njit(**options)(serial)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return (self.serial if _forked else self.parallel)(*args, **kwargs)


def kernel(rows: Any = None) -> Callable[[Callable[..., Any]], Kernel]:
    """Decorator: compile a function as a :class:`Kernel` over the memory ``rows``."""
    return lambda function: Kernel(function, rows)
