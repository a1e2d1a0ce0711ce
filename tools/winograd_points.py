#!/usr/bin/env python3
"""Winograd F(m x m, 3x3) transforms (Toom-Cook, exact rationals) and their f32 rounding error.

    python3 tools/winograd_points.py                  # the variants conv2d.ts uses: matrices checked, errors
    python3 tools/winograd_points.py --search         # F(8x8): every 4-pair point set from POOL, best first
    python3 tools/winograd_points.py --emit 5/4 4/5 5/2 2/5   # F(8x8) matrices for points 0, +-p..., as TS

For points p_0..p_{a-2} and infinity (a = m + 2): A^T[i][j] = p_j^i (the last column 1 in the last
row), G[j] = (1, p_j, p_j^2) / prod_{l != j}(p_j - p_l) (the last row (0, 0, 1)), and B^T solved
exactly so that A^T diag(G g) B^T d is the correlation of d with g for every g and d. The error is
the 2-D transform's in f32 (numpy) against a float64 direct conv over 128-channel patches of
standard normal inputs and weights scaled to an output rms of ~1. Needs numpy; not used at run time.
"""
import argparse
import itertools
from fractions import Fraction as Fr

import numpy as np


def solve(A, b):
    """Exact Gauss-Jordan solve of the consistent system A x = b (Fractions)."""
    n = len(A[0])
    rows = [r[:] + [v] for r, v in zip(A, b)]
    piv, r = [], 0
    for c in range(n):
        p = next((i for i in range(r, len(rows)) if rows[i][c] != 0), None)
        if p is None:
            continue
        rows[r], rows[p] = rows[p], rows[r]
        rows[r] = [v / rows[r][c] for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][c] != 0:
                f = rows[i][c]
                rows[i] = [x - f * y for x, y in zip(rows[i], rows[r])]
        piv.append(c)
        r += 1
    assert all(row[-1] == 0 for row in rows[r:]), "inconsistent"
    x = [Fr(0)] * n
    for i, c in enumerate(piv):
        x[c] = rows[i][-1]
    return x


def make(m, pts, r=3):
    a = m + r - 1
    assert len(pts) == a - 1
    N = []
    for j, p in enumerate(pts):
        prod = Fr(1)
        for l, q in enumerate(pts):
            if l != j:
                prod *= p - q
        N.append(prod)
    AT = [[p**i for p in pts] + [Fr(1 if i == m - 1 else 0)] for i in range(m)]
    G = [[p**k / N[j] for k in range(r)] for j, p in enumerate(pts)] + [[Fr(0)] * (r - 1) + [Fr(1)]]
    BT = [[Fr(0)] * a for _ in range(a)]
    for t in range(a):
        A, b = [], []
        for i in range(m):
            for k in range(r):
                A.append([AT[i][j] * G[j][k] for j in range(a)])
                b.append(Fr(1 if t == i + k else 0))
        for j, v in enumerate(solve(A, b)):
            BT[j][t] = v
    for j in range(a):  # sign: each row of G led by a positive entry (cosmetic)
        lead = next(v for v in G[j] if v != 0)
        if lead < 0:
            G[j] = [-v for v in G[j]]
            BT[j] = [-v for v in BT[j]]
    check(AT, G, BT, m, r)
    return AT, G, BT


def check(AT, G, BT, m, r=3):
    a = m + r - 1
    for i in range(m):
        for k in range(r):
            for t in range(a):
                s = sum(AT[i][j] * G[j][k] * BT[j][t] for j in range(a))
                assert s == (1 if t == i + k else 0), (i, k, t, s)


def error(AT, G, BT, m, trials=200, seed=0, C=128):
    rng = np.random.default_rng(seed)
    a = m + 2
    f32 = lambda M: np.array([[float(v) for v in row] for row in M], np.float32)
    AT32, G32, BT32 = f32(AT), f32(G), f32(BT)
    d = rng.standard_normal((trials, C, a, a)).astype(np.float32)
    g = (rng.standard_normal((trials, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    ref = np.zeros((trials, m, m))
    for i in range(m):
        for j in range(m):
            ref[:, i, j] = np.einsum(
                "tcuv,tcuv->t", d[:, :, i : i + 3, j : j + 3].astype(np.float64), g.astype(np.float64)
            )
    U = np.einsum("ij,tcjk,lk->tcil", G32, g, G32).astype(np.float32)
    V = np.einsum("ij,tcjk,lk->tcil", BT32, d, BT32).astype(np.float32)
    M = np.einsum("tcij,tcij->tij", U, V).astype(np.float32)
    Y = np.einsum("ij,tjk,lk->til", AT32, M, AT32).astype(np.float32)
    e = np.abs(Y - ref)
    return e.max(), np.sqrt((e**2).mean()), np.sqrt((ref**2).mean())


def symmetric(pairs):
    return [Fr(0)] + [s * p for p in pairs for s in (1, -1)]


VARIANTS = {
    "F(4x4,3x3)": (4, [Fr(1), Fr(2)]),
    "F(6x6,3x3)": (6, [Fr(1), Fr(2), Fr(1, 2)]),
    "F(8x8,3x3)": (8, [Fr(5, 4), Fr(4, 5), Fr(5, 2), Fr(2, 5)]),
    "F(8x8,3x3) +-1,+-2,+-1/2,+-4": (8, [Fr(1), Fr(2), Fr(1, 2), Fr(4)]),
}
POOL = [Fr(s) for s in "1 2 1/2 3/2 2/3 3/4 4/3 5/4 4/5 5/2 2/5 5/3 3/5 6/5 5/6 7/4 4/7 7/5 5/7 3 1/3".split()]


def ts(v):
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator} / {v.denominator}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--search", action="store_true")
    ap.add_argument("--emit", nargs=4, metavar="P")
    o = ap.parse_args()
    if o.emit:
        AT, G, BT = make(8, symmetric([Fr(p) for p in o.emit]))
        for name, M in (("BT", BT), ("G", G), ("AT", AT)):
            print(f"  {name}: [")
            for row in M:
                print("    [" + ", ".join(ts(v) for v in row) + "],")
            print("  ],")
        return
    if o.search:
        res = []
        for combo in itertools.combinations(POOL, 4):
            AT, G, BT = make(8, symmetric(combo))
            mx, rms, _ = error(AT, G, BT, 8, trials=24)
            res.append((rms, mx, combo))
        res.sort(key=lambda t: t[0])
        for rms, mx, combo in res[:12]:
            AT, G, BT = make(8, symmetric(combo))
            mx, rms, _ = error(AT, G, BT, 8, seed=5)
            print(" ".join(f"+-{c}" for c in combo), f"rms {rms:.2e} max {mx:.2e}")
        return
    for name, (m, pairs) in VARIANTS.items():
        AT, G, BT = make(m, symmetric(pairs))
        mx, rms, rr = error(AT, G, BT, m)
        print(f"{name:30s} max |error| {mx:.2e}  rms {rms:.2e}  (output rms {rr:.2f})")


if __name__ == "__main__":
    main()
