"""The shared pieces of the paper reproductions: claims decided from numbers both ways, output
files, the thin-script entry point."""

from __future__ import annotations

import csv
import json
import math

import pytest

from lipbound.errors import InputError
from lipbound.reproduce.common import (
    ExperimentResult,
    Settings,
    claim_at_least,
    claim_less_than,
    format_value,
    main,
    markdown_table,
    write_csv,
)


def test_claim_less_than_both_ways_and_nan():
    assert claim_less_than("smaller by 1e4", 1e-9, 1e-4, 1e-4).holds is True
    assert claim_less_than("smaller by 1e4", 1e-7, 1e-4, 1e-4).holds is False
    undecided = claim_less_than("smaller", math.nan, 1.0)
    assert undecided.holds is None and "NaN" in undecided.evidence
    # inf is a number that decides: inf < 1 is false
    assert claim_less_than("finite", math.inf, 1.0).holds is False


def test_claim_at_least_both_ways():
    assert claim_at_least("bigger", 3.0, 1.0, 2.0).holds is True
    assert claim_at_least("bigger", 1.5, 1.0, 2.0).holds is False
    assert "3 >= 2 x 1" in claim_at_least("bigger", 3.0, 1.0, 2.0).evidence


def test_format_value():
    assert format_value(1.5e-5) == "1.50e-05"
    assert format_value(0.25) == "0.25"
    assert format_value(math.inf) == "inf" and format_value(math.nan) == "nan"
    assert format_value(7) == "7" and format_value(True) == "True"


def test_markdown_table_and_csv(tmp_path):
    rows = [{"model": "affine", "error": math.inf}, {"model": "additive", "error": 1e-7}]
    table = markdown_table(rows)
    assert table.splitlines()[0] == "| model | error |"
    assert "| affine | inf |" in table
    path = write_csv(rows, tmp_path / "t.csv")
    read = list(csv.DictReader(open(path)))
    assert read == [{"model": "affine", "error": "inf"}, {"model": "additive", "error": "1e-07"}]
    with pytest.raises(InputError, match="no rows"):
        write_csv([], tmp_path / "empty.csv")


def test_settings_validates_scale(tmp_path):
    with pytest.raises(InputError, match="scale must be one of"):
        Settings(out=tmp_path, scale="huge")
    assert Settings(out=tmp_path, scale="full").pick(1, 2, 3) == 3


def _toy(settings: Settings) -> ExperimentResult:
    value = settings.pick(1.0, 2.0, 3.0)
    return ExperimentResult(
        name="toy", title="Toy table", scale=settings.scale, paper={"value": 2.0},
        ours={"value": value}, rows=[{"value": value}],
        claims=[claim_less_than("value below the paper's", value, 2.0)])


def test_main_writes_result_and_table(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main("toy", "a toy", _toy, ["--out", str(out), "--smoke"]) == 0
    written = json.loads((out / "result.json").read_text())
    result = ExperimentResult.from_json(written)
    assert result.ours == {"value": 1.0} and result.scale == "smoke"
    assert result.claims[0].holds is True
    assert (out / "table.csv").read_text().splitlines() == ["value", "1.0"]
    printed = capsys.readouterr().out
    assert "Toy table [smoke]" in printed and "holds" in printed


def test_main_bad_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main("toy", "a toy", _toy, ["--out", str(blocker)]) == 2
    assert "--out" in capsys.readouterr().err
