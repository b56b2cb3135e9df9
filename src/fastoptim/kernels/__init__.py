"""Fused CPU kernels written with Numba: one module per optimizer plus shared helpers."""
