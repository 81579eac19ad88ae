"""Executors: reference (numpy), cpu (numba), cuda (pycuda)."""
