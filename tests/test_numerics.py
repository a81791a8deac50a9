"""The one per-sample norm (lipbound.blocks.numerics): scaled, so it neither overflows nor
underflows, against Python's math.hypot (correctly scaled, independent of torch and numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lipbound.blocks.numerics import per_sample_norm, row_norms


@pytest.mark.parametrize("magnitude", [1e200, 1e-200, 1.0, 5e-324])
def test_norm_of_huge_and_tiny_samples_matches_hypot(magnitude):
    rows = [[3.0, -4.0, 12.0], [1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]
    v = torch.tensor(rows, dtype=torch.float64) * magnitude
    want = [math.hypot(*(x * magnitude for x in row)) for row in rows]
    got = per_sample_norm(v).tolist()
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=4e-16, abs=0) if w else g == 0
    np.testing.assert_array_equal(row_norms(v.numpy()), np.array(got))


def test_float16_norm_in_its_own_dtype_does_not_overflow():
    v = torch.full((2, 4), 300.0, dtype=torch.float16)  # 300^2 = 90000 > 65504
    assert torch.isinf((v * v).sum(dim=1)).all()  # the unscaled norm would overflow
    got = per_sample_norm(v, None)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, torch.full((2,), 600.0, dtype=torch.float16))
    assert per_sample_norm(v).dtype == torch.float64  # float64 by default


def test_non_finite_and_empty_samples():
    v = torch.tensor([[1.0, math.nan, 2.0], [math.inf, 1.0, 0.0], [math.inf, math.nan, 1.0],
                      [-math.inf, 1.0, 1.0]], dtype=torch.float64)
    got = per_sample_norm(v)
    assert math.isnan(got[0]) and got[1] == math.inf and math.isnan(got[2])
    assert got[3] == math.inf
    np.testing.assert_array_equal(row_norms(v.numpy()), got.numpy())
    assert per_sample_norm(torch.zeros(3, 0)).tolist() == [0.0, 0.0, 0.0]
    assert row_norms(np.zeros((2, 0))).tolist() == [0.0, 0.0]


def test_image_samples_are_flattened():
    v = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    want = [math.hypot(*v[b].reshape(-1).tolist()) for b in range(2)]
    assert per_sample_norm(v).tolist() == pytest.approx(want, rel=4e-16)
