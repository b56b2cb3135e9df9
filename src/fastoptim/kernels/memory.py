"""Shared kernel helpers: raw tensor memory as buffers, bfloat16 and 8-bit codes, chunking.

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
  as torch's fused kernels round float16 to nearest. The conversions use the CPU's float16
  instructions where it has them (:func:`float16_in_hardware`), else integer and float32
  operations that give the same bits.
- bfloat16: the source is ``Rounded`` and the sink its bits; ``put`` rounds to bfloat16: to
  nearest (ties to even) or, with ``stochastic``, up or down with probabilities given by the
  distance (unbiased).
- 8-bit: the source is ``Quantized``: a block of at most ``QBLOCK`` codes and the block's
  scale. ``finish`` sets the scale to the smallest power of two at least 1/1.875 of the
  largest magnitude in the sink (so an unchanged value keeps its code's value when the scale
  moves), and encodes each value divided by it as an 8-bit float: signed codes (int8) have a
  sign bit, 4 exponent and 3 mantissa bits, down to 2^-14 of the scale with subnormals below;
  unsigned codes (uint8, for non-negative state such as squared averages) have 5 exponent and
  3 mantissa bits, down to 2^-30. A code is within 6.25% of the value (nearest) or one code
  step away (stochastic, unbiased).

Random bits for stochastic rounding come from a hash of (call key, tensor, buffer row, element
index): reproducible, independent of the thread count, and independent between elements
(tested). Each rounding takes 16 of a hash's 32 bits: bfloat16 buffers in rows 2k-1 and 2k
share one hash per element, and code i of an 8-bit block shares one with code i + half the
block. With 16 bits an 8-bit code's rounding probability is exact to 2^-16 of a code step.
"""

import os
import platform
import types as pytypes
import warnings
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features as host_features
from numba.core.errors import NumbaIRAssumptionWarning
from numba.extending import intrinsic, overload

# Elements per unit of parallel work: large tensors are split so all threads share them.
CHUNK = 1 << 16

# Elements per absmax scale of 8-bit state; CHUNK is a multiple of it.
QBLOCK = 256

Rounded = namedtuple("Rounded", ["bits", "key", "offset", "shift", "stochastic"])
Quantized = namedtuple("Quantized", ["codes", "scale", "key", "offset", "stochastic"])

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


@intrinsic
def _magnitude_bits(typingctx, value):  # type: ignore[no-untyped-def]
    """A float32's bits without its sign, as int32: they order as the magnitudes do (NaN
    above infinity), and an int32 maximum over them vectorizes where a float one does not."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i32 = ir.IntType(32)
        return builder.and_(builder.bitcast(args[0], i32), ir.Constant(i32, 0x7FFFFFFF))

    return types.int32(types.float32), codegen


@njit(inline="always")
def view(address, size, marker):  # type: ignore[no-untyped-def]
    """The ``size`` elements of storage type ``marker`` at ``address`` as a 1-d array."""
    return carray(_void_pointer(address), (size,), marker)


@njit(inline="always")
def bfloat16_to_float32(bits):  # type: ignore[no-untyped-def]
    """A bfloat16 (uint16 bits) as float32: its bits are the float32's upper half."""
    return _bits_to_float32(np.uint32(bits) << np.uint32(16))


@intrinsic
def random_bits(typingctx, key, offset, index):  # type: ignore[no-untyped-def]
    """32 well-mixed bits (uint32) from an integer ``key`` and an element index ``offset +
    index``: a two-multiply integer hash of ``key + offset + index`` in 32-bit arithmetic.
    Numba would widen it to 64 bits, which does not vectorize; adding in 32 bits also keeps a
    loop's index vector at 32 bits."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i32 = ir.IntType(32)

        def as_i32(value):  # type: ignore[no-untyped-def]
            return builder.trunc(value, i32) if value.type.width > 32 else value

        def mix(x, shift):  # type: ignore[no-untyped-def]
            return builder.xor(x, builder.lshr(x, ir.Constant(i32, shift)))

        x = builder.add(as_i32(args[0]), builder.add(as_i32(args[1]), as_i32(args[2])))
        x = builder.mul(mix(x, 16), ir.Constant(i32, 0x7FEB352D))
        x = builder.mul(mix(x, 15), ir.Constant(i32, 0x846CA68B))
        return mix(x, 16)

    return types.uint32(key, offset, index), codegen


@njit(inline="always")
def round_to_bfloat16(value, stochastic, bits):  # type: ignore[no-untyped-def]
    """A float32 as bfloat16 bits: to nearest (ties to even), or stochastically using the low
    16 of the random ``bits``. NaN stays NaN."""
    raw = _float32_to_bits(np.float32(value))
    nearest = ((raw >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    raw += (bits & np.uint32(0xFFFF)) if stochastic else nearest
    return np.uint16(0x7FC0) if value != value else np.uint16(raw >> np.uint32(16))


@intrinsic
def _decode_code(typingctx, code, bias, subnormal_step):  # type: ignore[no-untyped-def]
    """The float32 value of an 8-bit float ``code`` (int8: sign and magnitude; uint8:
    magnitude) with exponent ``bias`` and subnormal step ``subnormal_step``: selects, not
    branches, so that loops reading codes vectorize."""
    signed = code.signed

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i32, f32 = ir.IntType(32), ir.FloatType()
        extend = builder.sext if signed else builder.zext
        value = extend(args[0], i32)
        magnitude = value
        sign = ir.Constant(i32, 0)
        if signed:
            negative = builder.icmp_signed("<", value, ir.Constant(i32, 0))
            magnitude = builder.select(negative, builder.neg(value), value)
            sign = builder.and_(value, ir.Constant(i32, -(1 << 31)))
        bias_value = builder.trunc(args[1], i32)
        normal_bits = builder.shl(builder.add(magnitude, bias_value), ir.Constant(i32, 20))
        normal = builder.bitcast(builder.or_(normal_bits, sign), f32)
        step = builder.fptrunc(args[2], f32)
        subnormal = builder.fmul(builder.sitofp(value, f32), step)
        small = builder.icmp_signed("<", magnitude, ir.Constant(i32, 8))
        return builder.select(small, subnormal, normal)

    return types.float32(code, bias, subnormal_step), codegen


@intrinsic
def _encode_magnitude(typingctx, y, bias, subnormal_step, stochastic, bits):  # type: ignore[no-untyped-def]
    """The 8-bit float code (int32) of float32 ``y`` in [0, 1.875] for the code with exponent
    ``bias`` and subnormal step ``subnormal_step``, rounded to nearest or stochastically with
    the random ``bits``; in 32-bit arithmetic, which vectorizes."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        value, bias_value, step, random, chance = args[0], args[1], args[2], args[4], args[3]
        i32, f32 = ir.IntType(32), ir.FloatType()
        value = builder.fptrunc(value, f32) if value.type != f32 else value
        random = builder.trunc(random, i32) if random.type.width > 32 else random
        bias_value = builder.trunc(bias_value, i32) if bias_value.type.width > 32 else bias_value
        step = builder.fptrunc(step, f32) if step.type != f32 else step
        # A subnormal code's value (below 8 steps) is lifted by 8 steps into the first normal
        # range, where the step is the same; its code is then 8 more than the subnormal one.
        lift = builder.fmul(step, ir.Constant(f32, 8.0))  # folded: step is a constant
        small = builder.fcmp_ordered("<", value, lift)
        lifted = builder.select(small, builder.fadd(value, lift), value)
        # The code: the float's bits with the low 20 dropped, after adding 20 random bits
        # (stochastic) or half of the dropped unit (nearest).
        rounding = builder.select(
            chance, builder.lshr(random, ir.Constant(i32, 12)), ir.Constant(i32, 1 << 19)
        )
        rounded = builder.lshr(
            builder.add(builder.bitcast(lifted, i32), rounding), ir.Constant(i32, 20)
        )
        offset = builder.select(small, builder.add(bias_value, ir.Constant(i32, 8)), bias_value)
        return builder.sub(rounded, offset)

    return types.int32(y, bias, subnormal_step, stochastic, bits), codegen


@intrinsic
def _decode_signed_as_float16(typingctx, code):  # type: ignore[no-untyped-def]
    """The float32 value of a signed 8-bit code through the hardware's float16 conversion: a
    code's magnitude (4 exponent, 3 mantissa bits) shifted left by 7 is a float16 with the
    same value, float16's subnormals being the code's (identical values, fewer operations)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i16 = ir.IntType(16)
        value = builder.sext(args[0], i16)
        negative = builder.icmp_signed("<", value, ir.Constant(i16, 0))
        magnitude = builder.select(negative, builder.neg(value), value)
        sign = builder.and_(value, ir.Constant(i16, -(1 << 15)))
        bits = builder.or_(builder.shl(magnitude, ir.Constant(i16, 7)), sign)
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return types.float32(code), codegen


def float16_in_hardware() -> bool:
    """Whether the CPU Numba compiles for converts between float16 and float32 in one
    instruction (x86 with F16C, every 64-bit ARM). Elsewhere LLVM would call a runtime
    function that Numba does not link, so float16 parameters and the 8-bit decoder use
    integer and float32 operations."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else host_features()
    return "+f16c" in features.split(",")


@intrinsic
def _widen_float16(typingctx, bits):  # type: ignore[no-untyped-def]
    """float16 ``bits`` (int16) as float32 by the hardware's conversion (LLVM fpext)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def _narrow_to_float16(typingctx, value):  # type: ignore[no-untyped-def]
    """float32 ``value`` as float16 bits (int16), rounded to nearest even by the hardware's
    conversion (LLVM fptrunc)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.int16(types.float32), codegen


@intrinsic
def _widen_float16_by_arithmetic(typingctx, bits):  # type: ignore[no-untyped-def]
    """float16 ``bits`` (int16) as float32 in integer and float32 operations (selects, which
    vectorize): the exponent and mantissa shifted into float32's places and the exponent
    rebiased; infinity and NaN get float32's top exponent (NaN made quiet, as the hardware
    does), and a subnormal m * 2^-24 is computed exactly as (1 + m / 1024) * 2^-14 - 2^-14."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i32, f32 = ir.IntType(32), ir.FloatType()
        rebias = ir.Constant(i32, (127 - 15) << 23)
        top = ir.Constant(i32, 31 << 23)
        value = builder.zext(args[0], i32)
        shifted = builder.shl(builder.and_(value, ir.Constant(i32, 0x7FFF)), ir.Constant(i32, 13))
        exponent = builder.and_(shifted, top)
        normal = builder.add(shifted, rebias)
        widened = builder.add(normal, rebias)
        nan = builder.icmp_unsigned(">", shifted, top)
        widened = builder.select(nan, builder.or_(widened, ir.Constant(i32, 1 << 22)), widened)
        special = builder.icmp_unsigned("==", exponent, top)
        normal = builder.select(special, widened, normal)
        lifted = builder.bitcast(builder.add(normal, ir.Constant(i32, 1 << 23)), f32)
        subnormal = builder.bitcast(builder.fsub(lifted, ir.Constant(f32, 2.0**-14)), i32)
        tiny = builder.icmp_unsigned("==", exponent, ir.Constant(i32, 0))
        magnitude = builder.select(tiny, subnormal, normal)
        sign = builder.shl(builder.and_(value, ir.Constant(i32, 0x8000)), ir.Constant(i32, 16))
        return builder.bitcast(builder.or_(magnitude, sign), f32)

    return types.float32(types.int16), codegen


@intrinsic
def _narrow_to_float16_by_arithmetic(typingctx, value):  # type: ignore[no-untyped-def]
    """float32 ``value`` as float16 bits (int16), rounded to nearest even, in integer and
    float32 operations (selects, which vectorize). Normal results: the rebiased bits with the
    13 dropped ones rounded by adding 0xFFF plus the lowest kept bit (a carry may reach
    infinity). Below 2^-14, adding 0.5 rounds the magnitude to a multiple of 2^-24 (the
    subnormal step) and the low bits of the sum are the code. From 2^16 up: infinity; NaN
    gives a quiet NaN with the top of its payload, as the hardware does."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i32, f32 = ir.IntType(32), ir.FloatType()
        raw = builder.bitcast(args[0], i32)
        sign = builder.and_(raw, ir.Constant(i32, -(1 << 31)))
        magnitude = builder.xor(raw, sign)
        kept = builder.lshr(magnitude, ir.Constant(i32, 13))
        odd = builder.and_(kept, ir.Constant(i32, 1))
        rounded = builder.add(magnitude, ir.Constant(i32, 0xFFF - ((127 - 15) << 23)))
        normal = builder.lshr(builder.add(rounded, odd), ir.Constant(i32, 13))
        half = ir.Constant(f32, 0.5)
        sum_bits = builder.bitcast(builder.fadd(builder.bitcast(magnitude, f32), half), i32)
        subnormal = builder.sub(sum_bits, ir.Constant(i32, 0x3F000000))
        tiny = builder.icmp_unsigned("<", magnitude, ir.Constant(i32, (127 - 14) << 23))
        finite = builder.select(tiny, subnormal, normal)
        nan = builder.icmp_unsigned(">", magnitude, ir.Constant(i32, 0x7F800000))
        payload = builder.and_(kept, ir.Constant(i32, 0x3FF))
        quiet_nan = builder.or_(payload, ir.Constant(i32, 0x7E00))
        huge = builder.select(nan, quiet_nan, ir.Constant(i32, 0x7C00))
        large = builder.icmp_unsigned(">=", magnitude, ir.Constant(i32, (127 + 16) << 23))
        code = builder.or_(
            builder.select(large, huge, finite), builder.lshr(sign, ir.Constant(i32, 16))
        )
        return builder.trunc(code, ir.IntType(16))

    return types.int16(types.float32), codegen


def float16_to_float32(bits):  # type: ignore[no-untyped-def]
    """A float16 (int16 bits) as float32."""


@overload(float16_to_float32, inline="always")
def _float16_to_float32(bits):  # type: ignore[no-untyped-def]
    if float16_in_hardware():
        return lambda bits: _widen_float16(bits)
    return lambda bits: _widen_float16_by_arithmetic(bits)


def round_to_float16(value):  # type: ignore[no-untyped-def]
    """A float32 as float16 bits (int16), rounded to nearest (ties to even): overflow gives
    infinity, NaN stays NaN."""


@overload(round_to_float16, inline="always")
def _round_to_float16(value):  # type: ignore[no-untyped-def]
    if float16_in_hardware():
        return lambda value: _narrow_to_float16(np.float32(value))
    return lambda value: _narrow_to_float16_by_arithmetic(np.float32(value))


@njit(inline="always")
def block_scale(absmax):  # type: ignore[no-untyped-def]
    """The scale of a block whose largest magnitude is ``absmax``: the smallest power of two
    at least ``absmax / 1.875`` (the largest code), or 0. Powers of two make rescaling exact:
    a value that did not change keeps its code's value when the block's scale moves."""
    raw = _float32_to_bits(np.float32(absmax) / np.float32(1.875))
    exponent = (raw >> np.uint32(23)) + (np.uint32(1) if raw & np.uint32(0x7FFFFF) else 0)
    return _bits_to_float32(np.uint32(exponent << np.uint32(23))) if absmax > 0 else np.float32(0)


def decode(code):  # type: ignore[no-untyped-def]
    """An 8-bit code as a float32 in [-1.875, 1.875] (int8: signed; uint8: unsigned)."""


@overload(decode, inline="always")
def _decode(code):  # type: ignore[no-untyped-def]
    if code == types.uint8:
        return lambda code: _decode_code(code, 768, 2.0**-33)
    if float16_in_hardware():
        return lambda code: _decode_signed_as_float16(code)
    return lambda code: _decode_code(code, 896, 2.0**-17)


def encode_code(y, codes, stochastic, bits):  # type: ignore[no-untyped-def]
    """``y`` in [-1.875, 1.875] as a code of ``codes``' type (uint8 codes take y >= 0)."""


@overload(encode_code, inline="always")
def _encode_code(y, codes, stochastic, bits):  # type: ignore[no-untyped-def]
    if codes.dtype == types.uint8:
        return lambda y, codes, stochastic, bits: np.uint8(
            _encode_magnitude(y, 768, 2.0**-33, stochastic, bits)
        )

    def signed(y, codes, stochastic, bits):  # type: ignore[no-untyped-def]
        magnitude = _encode_magnitude(abs(y), 896, 2.0**-17, stochastic, bits)
        return np.int8(-magnitude if y < 0 else magnitude)

    return signed


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
    names its memory rows (:func:`memory_rows`); it is called with keyword arguments."""

    def __init__(self, function: Callable[..., Any], rows: Any) -> None:
        options = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"contract"}}
        self.rows = rows
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


@njit(cache=True)
def quantize(values, codes, scales):  # type: ignore[no-untyped-def]
    """Encode ``values`` (1-d, float32) blockwise into ``codes`` (int8 or uint8) and ``scales``
    (one absmax per QBLOCK values), rounding to nearest, as the kernels' ``finish`` does."""
    for block in range(scales.size):
        first, last = block * QBLOCK, min((block + 1) * QBLOCK, values.size)
        absmax = np.float32(0.0)
        for i in range(first, last):
            absmax = max(absmax, abs(values[i]))
        scales[block] = block_scale(absmax)
        divisor = scales[block] if scales[block] > 0 else np.float32(1.0)
        for i in range(first, last):
            codes[i] = encode_code(values[i] / divisor, codes, False, np.uint32(0))


@njit(cache=True)
def dequantize(codes, scales, values):  # type: ignore[no-untyped-def]
    """Decode blockwise ``codes`` with their ``scales`` into ``values`` (1-d, float32)."""
    for i in range(codes.size):
        values[i] = decode(codes[i]) * scales[i // QBLOCK]
