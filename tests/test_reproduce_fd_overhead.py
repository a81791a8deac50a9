"""Table 11 reproduction: the smoke run writes its files with finite, positive times, and the
claims are decided from the numbers both ways (timing itself never decides a test)."""

from __future__ import annotations

import math

from reproduce_helpers import finite, run_smoke

from lipbound.reproduce import fd_overhead


def test_smoke_run_writes_files_with_finite_numbers(tmp_path):
    result, back, rows = run_smoke(fd_overhead.run, tmp_path)
    assert [int(r["K"]) for r in rows] == [1, 5, 10]
    for row in result.rows:
        assert row["seconds_per_step_fd"] > 0 and row["seconds_per_step_unregularized"] > 0
        assert math.isclose(row["overhead"], row["seconds_per_step_fd"]
                            / row["seconds_per_step_unregularized"])
    for k in (1, 5, 10):
        assert finite(back.ours[f"overhead_k{k}"])
    assert back.ours["memory_saving_fallbacks"] == 0
    assert back.paper == fd_overhead.PAPER


def test_fd_timing_overhead_is_the_ratio():
    t = fd_overhead.FDTiming(5, 3.0, 2.0)
    assert t.overhead == 1.5


def test_claims_both_ways():
    assert [c.holds for c in fd_overhead.claims(fd_overhead.PAPER)] == [True, True]
    rising = {"overhead_k1": 1.1, "overhead_k5": 1.3, "overhead_k10": 1.6}
    claims = fd_overhead.claims(rising)
    assert [c.holds for c in claims] == [False, False]
    assert claims[0].evidence == "1.1 > 1.3 > 1.6"
    undecided = fd_overhead.claims({**rising, "overhead_k5": math.nan})
    assert undecided[0].holds is None
