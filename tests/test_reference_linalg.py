"""Certified singular values of the exact Jacobian (reference.linalg): every bound computed in the
backend's own arithmetic, honest below float64's range, ``certified`` only for ball proofs."""

from __future__ import annotations

from fractions import Fraction

import flint
import mpmath
import pytest
import torch

import reference
from lipbound.blocks import (
    DiagonalScaling,
    InvertibleSequential,
    Permutation,
    figure1_chain,
    residual_flow,
)
from reference.linalg import certified_singular_values


def _mpf(q: Fraction) -> mpmath.mpf:
    """An exact rational as an mpf accurate to far more bits than any test needs."""
    with mpmath.workprec(4000):
        return mpmath.mpf(q.numerator) / q.denominator


def test_figure1_depth_400_sigma_min_far_below_float64_is_enclosed():
    """The stored float64 chain has sigma_min = fl(0.1)^400 exactly (a rational near 1e-400):
    float64 cannot hold it, the certificate must, with a nonzero error."""
    x = torch.ones(1, 2, dtype=torch.float64)
    sv = reference.singular_values(reference.compile(figure1_chain(400, "affine").double(),
                                                     "arb:256"), x)
    exact_min = _mpf(Fraction(0.1) ** 400)
    assert float(exact_min) == 0.0  # below float64's range: a float64 test would see 0
    assert sv.certified and sv.backend == "arb"
    assert sv.contains(1, exact_min) and sv.contains(0, mpmath.mpf(1))
    assert all(e > 0 for e in sv.errors)
    assert sv.errors[1] <= mpmath.mpf(1e-30) * exact_min
    assert sv.sigma_min < mpmath.mpf(10) ** -399


def test_general_svd_path_encloses_values_known_exactly():
    """A 3-d chain (not the 2x2 closed form): 400 diagonal scalings by (1, 0.5, fl(0.1)) then a
    permutation; the singular values are exactly 1, 2^-400 and fl(0.1)^400."""
    diag = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    model = InvertibleSequential(*[DiagonalScaling(diag.clone()) for _ in range(400)],
                                 Permutation(3, "reverse")).double()
    sv = reference.singular_values(reference.compile(model, "arb:128"),
                                   torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64))
    expected = [mpmath.mpf(1), mpmath.mpf(2) ** -400, _mpf(Fraction(0.1) ** 400)]
    assert sv.certified
    for i, want in enumerate(expected):
        assert sv.contains(i, want), (i, sv.exact[i], sv.errors[i])
        assert 0 < sv.errors[i] <= mpmath.mpf(1e-30) * want


def test_general_svd_path_on_a_full_matrix_holds_the_high_precision_values():
    """A dense 5x5 dyadic matrix with one entry's ball widened: the enclosures must hold the
    singular values of every matrix in the balls, here the midpoint one, computed by mpmath at
    2000 bits."""
    gen = torch.Generator().manual_seed(3)
    entries = torch.randn(5, 5, generator=gen, dtype=torch.float64).tolist()
    ref = reference.compile(figure1_chain(1, "affine").double(), "arb:96")
    with mpmath.workprec(2000):
        want = sorted(mpmath.svd_r(mpmath.matrix(entries), compute_uv=False), reverse=True)

    def matrix(r):
        with r.backend.active():
            rows = [[flint.arb(v) for v in row] for row in entries]
            rows[2][3] = rows[2][3] + flint.arb(0, 1e-25)  # an uncertain entry
        return [rows]

    sv = certified_singular_values(ref, matrix, rtol=1e-20)[0]
    assert sv.certified
    for i in range(5):
        assert sv.contains(i, want[i])
        assert 0 < sv.errors[i] <= mpmath.mpf(1e-20) * want[i]


def test_mpmath_is_an_estimate_and_agrees_with_the_arb_balls():
    x = torch.ones(1, 2, dtype=torch.float64)
    model = figure1_chain(60, "affine").double()
    arb = reference.singular_values(reference.compile(model, "arb:256"), x)
    mp = reference.singular_values(reference.compile(model, "mp:256"), x)
    assert arb.certified and not mp.certified and mp.backend == "mp"
    for i in range(2):
        assert arb.contains(i, mp.exact[i])
        assert mp.errors[i] <= mpmath.mpf(1e-30) * mp.exact[i]


def test_iterative_blocks_give_estimates_not_proofs():
    torch.manual_seed(0)
    model = residual_flow((2,), 1, 4, coeff=0.5).double().eval()
    sv = reference.singular_values(reference.compile(model, "arb:128"),
                                   torch.tensor([[0.2, -0.4]], dtype=torch.float64), rtol=1e-10)
    assert not sv.certified
    jac = torch.autograd.functional.jacobian(lambda v: model(v).reshape(-1),
                                             torch.tensor([[0.2, -0.4]], dtype=torch.float64))
    svals = torch.linalg.svdvals(jac.reshape(2, 2))
    for i in range(2):
        assert abs(float(sv.exact[i]) - float(svals[i])) <= 1e-12


def test_too_few_bits_or_a_singular_matrix_is_refused_not_certified_with_zero_error():
    x = torch.ones(1, 2, dtype=torch.float64)
    ref = reference.compile(figure1_chain(400, "affine").double(), "arb:64")
    with pytest.raises(reference.CertificationError, match="not certified"):
        reference.singular_values(ref, x, max_prec=64)
    one, zero = flint.arb(1), flint.arb(0)
    for n in (2, 3):  # the closed form and the general path
        singular = [[one if i == j == 0 else zero for j in range(n)] for i in range(n)]
        with pytest.raises(reference.CertificationError, match="may be singular"):
            certified_singular_values(ref, lambda r, m=singular: [m], max_prec=256)


def test_sweep_and_general_function_agree():
    """The Figure 1 sweep's singular values come from the same function."""
    from lipbound.precision.sweep import figure1_sweep

    records = figure1_sweep(depths=12, chains=("affine",), precisions=("float64",))
    ref = reference.compile(figure1_chain(12, "affine").double(), "arb:256")
    sv = reference.singular_values(ref, torch.ones(1, 2, dtype=torch.float64))
    assert records[-1].sigma_min == float(sv.sigma_min)
    assert records[-1].sigma_max == float(sv.sigma_max)


def test_bad_rtol_is_refused():
    ref = reference.compile(figure1_chain(2, "affine").double(), "arb:64")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rtol"):
            reference.singular_values(ref, torch.ones(1, 2, dtype=torch.float64), rtol=bad)
