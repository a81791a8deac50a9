"""Figure 18 reproduction: the smoke run writes its files with finite angles, NaN checkpoints are
kept and marked, and the claims are decided from the numbers both ways."""

from __future__ import annotations

import math

from reproduce_helpers import finite, run_smoke

from lipbound.reproduce import gradient_angles


def test_smoke_run_writes_files_with_finite_numbers(tmp_path, monkeypatch):
    memory_saving = {}
    train_run = gradient_angles.train_run

    def recording(preset, overrides, folder, settings, **kwargs):
        memory_saving[(overrides["coupling"], overrides["regularizer"])] = (
            overrides["memory_saving"])
        return train_run(preset, overrides, folder, settings, **kwargs)

    monkeypatch.setattr(gradient_angles, "train_run", recording)
    result, back, rows = run_smoke(gradient_angles.run, tmp_path)
    # paper, footnote 3: only FD trained memory-efficiently, None and NF with standard backprop
    assert memory_saving == {m: m[1] == "fd" for m in gradient_angles.MODELS.values()}
    assert [(r["model"], int(r["step"])) for r in rows] == [
        (m, s) for m in gradient_angles.MODELS for s in (2, 4)]
    for row in result.rows:
        # a few steps from initialisation: both gradients finite and nearly equal
        assert finite(row["mean_angle_deg"]) and 0 <= row["mean_angle_deg"] < 1
        assert row["nan_batches"] == 0 and row["batches"] == 2
    for name in gradient_angles.MODELS:
        assert back.ours[name]["nan_checkpoints"] == 0
        assert (tmp_path / "runs" / name.replace(" ", "_") / "checkpoints"
                / "step_0000004.pt").is_file()


def test_curve_summary_keeps_nan():
    summary = gradient_angles.curve_summary([10, 20, 30, 40], [0.01, 5.0, math.nan, math.nan])
    assert summary["nan_checkpoints"] == 2 and summary["first_nan_step"] == 30
    assert summary["worst_angle_deg"] == math.inf and summary["max_finite_angle_deg"] == 5.0
    assert math.isnan(summary["final_angle_deg"])
    assert summary["behaviour"] == "NaN from step 30"
    small = gradient_angles.curve_summary([10, 20], [1e-5, 2e-5])
    assert small["worst_angle_deg"] == 2e-5 and small["behaviour"].startswith("small")


def _curves(affine_none, affine_reg, additive_none) -> dict:
    steps = list(range(len(affine_none)))
    ours = {name: gradient_angles.curve_summary(steps, [1e-5] * len(steps))
            for name in gradient_angles.MODELS}
    ours["affine none"] = gradient_angles.curve_summary(steps, affine_none)
    ours["affine fd"] = gradient_angles.curve_summary(steps, affine_reg)
    ours["additive none"] = gradient_angles.curve_summary(steps, additive_none)
    return ours


def test_claims_hold_on_the_papers_pattern():
    claims = gradient_angles.claims(_curves([1e-4, 1e-1, 30.0, math.nan], [1e-4, 2e-4, 1e-4, 1e-4],
                                            [1e-4, 1e-4, 2e-4, 1e-4]))
    assert [c.holds for c in claims] == [True, True, True, True]


def test_claims_fail_the_other_way():
    claims = gradient_angles.claims(_curves([1e-2, 1e-2, 2e-2, 1e-2], [1e-4, 5.0, math.nan, 1.0],
                                            [1e-4, 3.0, 2e-4, 1e-4]))
    assert [c.holds for c in claims] == [False, False, False, False]
