"""Storage formats at the bit level, for the kernels: bfloat16 and float16 conversions,
blockwise 8-bit codes, and the random bits of stochastic rounding.

8-bit state keeps blocks of ``QBLOCK`` codes and one float32 scale per block: the smallest
power of two at least 1/1.875 of the block's largest magnitude (so an unchanged value keeps its
code's value when the scale moves); each value divided by it is an 8-bit float. Signed codes
(int8) have a sign bit, 4 exponent and 3 mantissa bits, down to 2^-14 of the scale with
subnormals below; unsigned codes (uint8, for non-negative state such as squared averages) have
5 exponent and 3 mantissa bits, down to 2^-30. A code is within 6.25% of the value (nearest) or
one code step away (stochastic, unbiased; with 16 random bits its probability is exact to
2^-16 of a code step).

float16 converts through the CPU's float16 instructions where it has them
(:func:`float16_in_hardware`), else through integer and float32 operations that give the same
bits.
"""

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import config
from numba.core.codegen import get_host_cpu_features as host_features
from numba.extending import intrinsic, overload

# Elements per absmax scale of 8-bit state.
QBLOCK = 256


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
