"""RESULTS.md: rendered from experiment results (claims that hold, do not hold, are undecided;
missing experiments), rebuilt from result.json files, and `python -m paper_figures` running
experiments in registry order with missing modules reported instead of crashing."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest

from lipbound.errors import InputError
from lipbound.reproduce import ExperimentResult, Settings, claim_less_than, run_experiment, suite
from lipbound.reproduce.common import Claim
from lipbound.reproduce.results import (
    FLOW_GAN_NOTE,
    flatten,
    load_result,
    load_results,
    render_results,
)


def _result(scale: str = "cpu") -> ExperimentResult:
    return ExperimentResult(
        name="toy_table", title="Table 99", scale=scale, scale_note="8x8 digits",
        paper={"affine": {"cond": 8.6e14, "inv": False}, "additive": {"cond": 7.2e4}},
        ours={"affine": {"cond": 2.0e7, "inv": False}, "extra": math.inf},
        claims=[claim_less_than("regularized error is smaller", 1e-6, 1e-2),
                claim_less_than("condition number below the paper's", 1e9, 8.6e14, 1e-6),
                claim_less_than("angle stays small", math.nan, 1.0)],
        rows=[{"model": "affine", "cond": 2.0e7}], files=["table.csv"], seconds=12.3,
        notes=["a deviation"])


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a / b": 1, "a / c / d": 2,
                                                               "e": 3}


def test_render_verdicts_numbers_and_missing():
    page = render_results({"toy_table": _result(), "figure4_ood": None,
                           "figure11_attack": "Not available: no module."})
    summary = "| Table 99 (`toy_table`) | cpu | 12 | 1 of 3 hold, 1 do not, 1 undecided |"
    assert summary in page
    assert "| regularized error is smaller | holds | 1.00e-06 < 1 x 0.01 |" in page
    assert "| condition number below the paper's | does not hold |" in page
    assert "| angle stays small | undecided | nan < 1 x 1 (NaN: undecided) |" in page
    # the paper's numbers beside ours, keys of either side, "-" where one side has none
    assert "| affine / cond | 8.60e+14 | 2.00e+07 |" in page
    assert "| affine / inv | False | False |" in page
    assert "| additive / cond | 7.20e+04 | - |" in page
    assert "| extra | - | inf |" in page
    assert "Scale: **cpu** (8x8 digits); run time 12 s. Command: " \
           "`python paper_figures/toy_table.py`." in page
    assert "Not run yet: `python -m paper_figures figure4_ood`." in page
    assert "| `figure11_attack` | - | - | Not available: no module. |" in page
    assert page.rstrip().endswith(FLOW_GAN_NOTE) and "## Appendix H (Flow-GAN)" in page


def test_result_json_reads_back_into_the_same_page(tmp_path):
    def run(settings: Settings) -> ExperimentResult:
        return _result(settings.scale)

    result = run_experiment(run, Settings(out=tmp_path / "toy_table", scale="smoke"))
    back = load_results(tmp_path, ["toy_table", "absent"])
    assert back["absent"] is None
    assert back["toy_table"].claims == result.claims
    assert back["toy_table"].ours["extra"] == "inf"  # non-finite numbers stay strings
    assert render_results({"toy_table": back["toy_table"]}) == render_results(
        {"toy_table": result})
    assert "Command: `python paper_figures/toy_table.py --smoke`" in render_results(back)


def test_load_result_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_result(bad)
    bad.write_text(json.dumps({"title": "x"}))
    with pytest.raises(InputError, match="holds no experiment result"):
        load_result(bad)
    bad.write_text(json.dumps({"name": "x", "title": "t", "scale": "cpu", "colour": 1}))
    with pytest.raises(InputError, match="is not an experiment result"):
        load_result(bad)


@pytest.fixture
def toy_registry(monkeypatch):
    """EXPERIMENTS of three: one that runs, one whose module is missing, one that fails."""
    def run(settings: Settings) -> ExperimentResult:
        return ExperimentResult(name="toy", title="Toy figure", scale=settings.scale,
                                claims=[Claim("it works", True, "1 < 2")],
                                rows=[{"x": settings.pick(1, 2, 3)}])

    def fail(settings: Settings) -> ExperimentResult:
        raise InputError("--full needs the CIFAR-10 preset")

    for name, fn in (("_toy_ok", run), ("_toy_fail", fail)):
        module = types.ModuleType(f"lipbound.reproduce.{name}")
        module.run = fn
        monkeypatch.setitem(sys.modules, module.__name__, module)
    registry = {"toy": "_toy_ok", "missing": "_no_such_module", "broken": "_toy_fail"}
    monkeypatch.setattr(suite, "EXPERIMENTS", registry)
    return registry


def test_suite_all_runs_in_order_and_reports_missing(tmp_path, toy_registry, capsys):
    out, page = tmp_path / "out", tmp_path / "RESULTS.md"
    code = suite.main(["all", "--smoke", "--out", str(out), "--results", str(page)])
    assert code == 2  # one experiment failed; the others still ran
    text = page.read_text()
    assert text.index("`toy`") < text.index("`missing`") < text.index("`broken`")
    assert "| Toy figure (`toy`) | smoke |" in text and "1 of 1 hold" in text
    assert "Not available: this checkout has no module `lipbound.reproduce._no_such_module`." \
        in text
    assert "Failed at scale smoke: --full needs the CIFAR-10 preset" in text
    assert json.loads((out / "toy" / "result.json").read_text())["rows"] == [{"x": 1}]
    err = capsys.readouterr().err
    assert "missing: not available in this checkout" in err
    assert "broken: error: --full needs the CIFAR-10 preset" in err
    # rebuilding the page from the result.json files alone keeps the toy's result
    page.unlink()
    assert suite.main(["results", "--out", str(out), "--results", str(page)]) == 0
    assert "| Toy figure (`toy`) | smoke |" in page.read_text()


def test_suite_one_name_and_bad_name(tmp_path, toy_registry, capsys):
    out, page = tmp_path / "out", tmp_path / "RESULTS.md"
    assert suite.main(["toy", "--out", str(out), "--results", str(page)]) == 0
    assert json.loads((out / "toy" / "result.json").read_text())["scale"] == "cpu"
    assert "Not run yet: `python -m paper_figures broken`." in page.read_text()
    assert suite.main(["nonesuch", "--out", str(out), "--results", str(page)]) == 2
    assert ("experiment must be one of ['toy', 'missing', 'broken'], 'all' or 'results', got "
            "'nonesuch'") in capsys.readouterr().err
