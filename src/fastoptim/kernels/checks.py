"""A fused check of many gradients at once: are all their elements finite?"""

from numba import prange

from fastoptim.kernels.memory import chunks_of, kernel, load, view


@kernel()
def count_nonfinite(addresses, sizes, marker):  # type: ignore[no-untyped-def]
    """The number of NaN or infinite elements in the tensors at ``addresses`` (``sizes``
    elements each, storage type ``marker``; bfloat16 and float16 bits are widened by ``load``,
    which keeps NaN and infinity): one vectorized, multi-threaded read."""
    rows = chunks_of(sizes)
    bad = 0
    for row in prange(rows.shape[0]):
        tensor, start, stop = rows[row, 0], rows[row, 1], rows[row, 2]
        values = view(addresses[tensor], stop, marker)
        found = 0
        for i in range(start, stop):
            value = load(values, i)
            found += (value - value) != 0  # NaN for NaN and for +-inf, 0 otherwise
        bad += found
    return bad
