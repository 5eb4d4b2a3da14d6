"""Error of a 3x3 convolution in bf16: direct, and Winograd F(2x2, 3x3) and F(4x4, 3x3)
with the transformed filters U and inputs V rounded to bf16 (the operands a bf16
Winograd's GEMMs would take), against the exact (float64) convolution.

    python tools/bench/winograd_bf16_error.py [--channels 256] [--trials 20]

Prints, for each method, the largest error over the trials relative to the largest
output magnitude (one patch of 4x4 outputs per trial, C input channels; inputs standard
normal, and rectified for half the trials as after a ReLU; filters N(0, 0.05)). This is
the measurement behind docs/lowp-kernels.md#bf16: why a bf16 model keeps its Winograd
layers in f32.
"""

import argparse

import numpy as np

# F(4x4, 3x3) from the points 0, 1, -1, 2, -2 (as nn-kernels' winograd module).
BT4 = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
G4 = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ]
)
AT4 = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    dtype=np.float64,
)
# F(2x2, 3x3) from the points 0, 1, -1.
BT2 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G2 = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
AT2 = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def bf16(a):
    """`a` rounded to bf16 (to nearest, ties to even), as float64."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)


def direct(d, g, out):
    """The out x out outputs of the 3x3 filters g (C, 3, 3) over the patch d (C, .., ..)."""
    return np.array(
        [[(d[:, i : i + 3, j : j + 3] * g).sum() for j in range(out)] for i in range(out)]
    )


def winograd(d, g, bt, gm, at, round_operands):
    """Y = Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A, U and V rounded to bf16 when asked."""
    u = np.einsum("ab,cbd,ed->cae", gm, g, gm)
    v = np.einsum("ab,cbd,ed->cae", bt, d, bt)
    if round_operands:
        u, v = bf16(u), bf16(v)
    return at @ (u * v).sum(0) @ at.T


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--trials", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    worst = {"direct bf16": 0.0, "F(2x2) bf16": 0.0, "F(4x4) bf16": 0.0, "F(4x4) f32": 0.0}
    for t in range(args.trials):
        d = rng.standard_normal((args.channels, 6, 6))
        if t % 2 == 0:
            d = np.maximum(d, 0.0)
        g = rng.standard_normal((args.channels, 3, 3)) * 0.05
        exact = direct(d, g, 4)
        scale = np.abs(exact).max()
        got = {
            "direct bf16": direct(bf16(d), bf16(g), 4),
            "F(2x2) bf16": winograd(d[:, :4, :4], g, BT2, G2, AT2, True),
            "F(4x4) bf16": winograd(d, g, BT4, G4, AT4, True),
            "F(4x4) f32": winograd(
                d.astype(np.float32), g.astype(np.float32), BT4, G4, AT4, False
            ),
        }
        for name, y in got.items():
            want = exact[: y.shape[0], : y.shape[1]]
            worst[name] = max(worst[name], np.abs(y - want).max() / scale)
    print(f"{args.channels} input channels, {args.trials} patches: max |error| / max |output|")
    for name, e in worst.items():
        print(f"  {name:12} {e:.2e}")


if __name__ == "__main__":
    main()
