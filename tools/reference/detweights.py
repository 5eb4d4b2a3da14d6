"""Deterministic pseudo-random values shared by the golden-fixture scripts.

The Rust side reimplements this bit for bit; see tools/reference/README.md.
"""

import numpy as np

M32 = np.uint64(0xFFFFFFFF)


def fnv1a32(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h ^= b
        h = (h * 16777619) & 0xFFFFFFFF
    return h


def hash_uniform(name: str, shape) -> np.ndarray:
    """u in [0, 1) (float64), one per element, row-major, for tensor `name`."""
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    h = np.uint64(fnv1a32(name.encode()))
    i = np.arange(n, dtype=np.uint64)
    k = (i * np.uint64(2654435761) + h) & M32
    k ^= k >> np.uint64(16)
    k = (k * np.uint64(0x85EBCA6B)) & M32
    k ^= k >> np.uint64(13)
    k = (k * np.uint64(0xC2B2AE35)) & M32
    k ^= k >> np.uint64(16)
    u = k.astype(np.float64) / 4294967296.0
    return u.reshape(tuple(shape))


def hash_signed(name: str, shape) -> np.ndarray:
    """x = 2u - 1 in [-1, 1) (float64)."""
    return 2.0 * hash_uniform(name, shape) - 1.0


def det_param(name: str, shape) -> np.ndarray:
    """Value of the state_dict entry `name` with shape `shape` (numpy).

    float32 except num_batches_tracked (int64 zeros).
    """
    shape = tuple(int(s) for s in shape)
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    x = hash_signed(name, shape)
    if name.endswith("running_var"):
        v = 1.0 + 0.5 * x
    elif name.endswith("running_mean"):
        v = 0.1 * x
    elif name.endswith("bias"):
        v = 0.1 * x
    elif name.endswith("weight"):
        if len(shape) == 1:
            v = 1.0 + 0.25 * x
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            v = x * np.sqrt(6.0 / fan_in)
        elif len(shape) == 2:
            fan_in = shape[1]
            v = x * np.sqrt(3.0 / fan_in)
        else:
            raise ValueError(f"unexpected weight rank: {name} {shape}")
    else:
        raise ValueError(f"unexpected state_dict entry: {name}")
    return v.astype(np.float32)


def det_input(shape) -> np.ndarray:
    """Input batch (B, 3, H, W): u from the name "input", float32."""
    return hash_uniform("input", shape).astype(np.float32)
