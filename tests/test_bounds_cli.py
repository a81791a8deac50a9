"""``lipbound bounds`` on the shipped specs and on saved models, in all four formats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lipbound.blocks import (
    ActNorm,
    DiagonalScaling,
    Invertible1x1Conv,
    InvertibleSequential,
    Permutation,
    coupling_mlp,
    glow_like,
    randomize_parameters,
)
from lipbound.bounds import bound_model
from lipbound.bounds.empirical import max_jacobian_norm
from lipbound.bounds.report import FORMATS, format_report, to_json
from lipbound.bounds.rounding import format_bound
from lipbound.bounds.spec import spec_bounds
from lipbound.bounds.table import expr_str
from lipbound.cli import main
from lipbound.io import save_model

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "architectures").glob("*.json"))


def test_examples_are_shipped():
    names = {p.stem for p in EXAMPLES}
    assert {"glow_cifar_additive", "glow_cifar_affine", "checkerboard_affine",
            "checkerboard_modified_affine", "checkerboard_residual_flow",
            "neural_ode"} <= names


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_in_every_format(path, fmt, capsys):
    rc = main(["bounds", str(path), "--format", fmt])
    out = capsys.readouterr().out
    net = spec_bounds(json.loads(path.read_text()))
    assert rc == (1 if net.refusals() else 0)
    if fmt == "json":
        data = json.loads(out)
        assert len(data["blocks"]) == len(net.blocks)
        assert set(data["network"]) >= {"forward", "inverse", "forward_lower", "inverse_lower"}
        assert {"kind", "scope", "forward", "inverse", "forward_expr"} <= set(data["blocks"][0])
        assert data["network"]["forward_expr"] == expr_str(net.forward_expr)
    else:
        assert net.blocks[0].kind in out


def test_residual_flow_example_numbers():
    spec = json.loads((EXAMPLES[0].parent / "checkerboard_residual_flow.json").read_text())
    net = spec_bounds(spec)
    lip_g = 0.8**5
    assert net.forward >= (1 + lip_g) ** 100 and net.forward == pytest.approx((1 + lip_g) ** 100)
    assert net.inverse == pytest.approx((1 - lip_g) ** -100, rel=1e-12)
    assert net.inverse_lower <= 1 / net.forward


def test_figure1_example_shows_the_exploding_inverse():
    net = spec_bounds(json.loads((EXAMPLES[0].parent / "figure1_affine.json").read_text()))
    assert net.forward == pytest.approx(1.0) and net.inverse == pytest.approx(1e15)


def test_modified_scale_lowers_the_inverse_bound():
    folder = EXAMPLES[0].parent
    std = spec_bounds(json.loads((folder / "checkerboard_affine.json").read_text()))
    mod = spec_bounds(json.loads((folder / "checkerboard_modified_affine.json").read_text()))
    c_std, c_mod = (next(v for k, v in net.blocks[0].inverse.values.items() if k.name == "c_1/g")
                    for net in (std, mod))
    assert c_mod <= 2.0 + 1e-12 < c_std


def test_spec_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"blocks": [{"kind": "additive", "lip_tt": 1}]}))
    assert main(["bounds", str(bad)]) == 2
    with pytest.raises(ValueError, match="lip_tt"):
        spec_bounds(json.loads(bad.read_text()))
    with pytest.raises(ValueError, match="kind"):
        spec_bounds({"blocks": [{"kind": "glow"}]})
    with pytest.raises(ValueError, match="two numbers"):
        spec_bounds({"blocks": [{"kind": "additive", "lip_t": 1}, {"kind": "additive",
                                                                   "lip_t": 2}]})
    with pytest.raises(ValueError, match="no zero entry"):
        spec_bounds({"blocks": [{"kind": "diagonal", "diag": [1.0, 0.0]}]})
    linear = spec_bounds({"blocks": [{"kind": "diagonal", "diag": [0.5, -4.0], "tag": 0},
                                     {"kind": "actnorm", "log_scale": [1e6, -2.0], "tag": 1}]})
    assert linear.blocks[0].forward.value == 4.0
    assert 2.0 <= linear.blocks[0].inverse.value <= 2.0 * (1 + 1e-15)
    assert linear.forward == math.inf  # e^(1e6) overflows: an infinite bound, not a crash
    assert math.exp(2.0) <= linear.blocks[1].inverse.value <= math.exp(2.0) * (1 + 1e-14)
    tagged = spec_bounds({"blocks": [{"kind": "additive", "lip_t": 1, "tag": 1},
                                     {"kind": "additive", "lip_t": 2, "tag": 2}]})
    assert tagged.forward == pytest.approx((1 + 5**0.5) / 2 * (2 + 8**0.5) / 2)


def test_saved_affine_model_needs_a_box(tmp_path, capsys):
    model = coupling_mlp(2, 2, 8, "affine", "modified")
    randomize_parameters(model, 0.3, torch.Generator().manual_seed(0))
    path = tmp_path / "m.pt"
    save_model(model, path)
    assert main(["bounds", str(path)]) == 0  # symbolic only: a result
    out = capsys.readouterr().out
    assert "symbolic only" in out and "--box" in out and "Theorem 2" in out
    assert out.count("Theorem 2") == 1 and "refused" not in out
    assert main(["bounds", str(path), "--box", "-4", "4", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    net = bound_model(model, (2,), box=(-4, 4))
    assert data["network"]["forward"] == net.forward
    assert data["network"]["inverse"] == net.inverse
    found = max_jacobian_norm(model, net.boxes[0])
    assert found <= data["network"]["forward"]


def test_saved_image_model_needs_a_shape(tmp_path, capsys):
    model = glow_like((2, 4, 4), 1, 1, 4, "additive")
    path = tmp_path / "g.pt"
    save_model(model, path)
    assert main(["bounds", str(path)]) == 2
    assert "--shape" in capsys.readouterr().err
    assert main(["bounds", str(path), "--shape", "2", "4", "4", "--format", "markdown"]) == 0
    assert "| network | value |" in capsys.readouterr().out


def test_exact_blocks_are_tight():
    torch.manual_seed(0)
    model = InvertibleSequential(DiagonalScaling(torch.randn(3)), ActNorm(3),
                                 Invertible1x1Conv(3), Permutation(3, "random"))
    randomize_parameters(model, 0.5, torch.Generator().manual_seed(0))
    net = bound_model(model, (3,), box=(-1, 1))
    # global: the box changes no row; the whole-network Jacobian of this linear network is its
    # one matrix, so that bound is the norm of the product, within rounding
    assert net.forward_composed == bound_model(model, (3,)).forward
    whole = max_jacobian_norm(model, net.boxes[0], n_samples=4)
    assert whole <= net.forward <= whole * (1 + 1e-3)
    assert net.forward_method.startswith("interval Jacobian")
    for k, block in enumerate(model.flat_blocks()):
        found = max_jacobian_norm(block, net.boxes[k], n_samples=4)
        assert found <= net.blocks[k].forward.value <= found * (1 + 1e-3)


def test_report_rounds_printed_bounds_up():
    assert format_bound(1.0000001234567) == "1.00001" and format_bound(2.0) == "2"
    for v in (math.pi, 1 / 3, 123456.7, 2.5e-7, 9.999999999e12):
        assert float(format_bound(v)) >= v
        assert float(format_bound(v, upward=False)) <= v
    assert format_bound(math.inf) == "inf" and format_bound(None) == "-"


def test_json_shape_matches_the_issue(tmp_path, capsys):
    """``{"blocks": [{"kind", "scope", "forward", "inverse", ...}], "network": {"forward",
    "inverse", "forward_lower", "inverse_lower", ...}}``: floats where known, the sympy
    expressions as strings beside them, ``null`` and the reason where refused."""
    model = coupling_mlp(2, 2, 8, "affine", "modified")
    randomize_parameters(model, 0.3, torch.Generator().manual_seed(0))
    path = tmp_path / "m.pt"
    save_model(model, path)
    net = bound_model(model, (2,), box=(-4, 4))
    assert main(["bounds", str(path), "--box", "-4", "4", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"blocks", "network"} and len(data["blocks"]) == len(net.blocks)
    for entry, row in zip(data["blocks"], net.blocks, strict=True):
        assert (entry["kind"], entry["scope"]) == (row.kind, row.scope)
        for direction in ("forward", "inverse"):
            bound = getattr(row, direction)
            assert isinstance(entry[direction], float) and entry[direction] == bound.value
            assert entry[f"{direction}_expr"] == expr_str(bound.tight)
            assert entry[f"{direction}_paper"] == bound.paper_value >= bound.value
            assert entry[f"{direction}_refused"] is None
    network = data["network"]
    for key in ("forward", "inverse", "forward_lower", "inverse_lower"):
        assert isinstance(network[key], float) and network[key] == getattr(net, key)
    assert network["forward_lower"] * network["inverse"] <= 1.0
    assert network["forward_expr"] == expr_str(net.forward_expr)
    assert network["forward_lower_expr"] == f"1/({expr_str(net.inverse_expr)})"
    assert main(["bounds", str(path), "--format", "json"]) == 0  # no box: symbolic, with reason
    symbolic = json.loads(capsys.readouterr().out)
    assert symbolic["blocks"][0]["forward"] is None and symbolic["network"]["forward"] is None
    assert symbolic["blocks"][0]["forward_refused"] is None
    assert "Theorem 2" in symbolic["blocks"][0]["forward_symbolic"]
    assert len(symbolic["network"]["symbolic"]) == 1 and not symbolic["network"]["refused"]
    assert symbolic["network"]["forward_expr"].count("Lip(s)") >= 2  # still symbolic


@pytest.mark.parametrize("diag, reason", [
    ({"max_abs": 2.0, "max_inv_abs": math.inf}, "infinite"),  # the Glow-like case: 1/inf
    ({"max_abs": 1e308, "max_inv_abs": 1e308}, "below the float range"),  # 1e-308: subnormal
])
def test_remark3_lower_bound_is_never_negative_or_subnormal(diag, reason, capsys):
    net = spec_bounds([{"kind": "diagonal", **diag}])
    assert net.forward_lower == 0.0 and math.copysign(1.0, net.forward_lower) == 1.0
    text = format_report(net, "text")
    line = next(ln for ln in text.splitlines() if "Remark 3: Lip(F) >=" in ln)
    assert line.split(">=")[1].split()[0] == "0" and "vacuous" in line and reason in line
    assert "-4.94" not in text and "e-324" not in text and "e-308" not in text
    assert "vacuous" in format_report(net, "markdown")
    network = to_json(net)["network"]
    assert network["forward_lower"] == 0.0 and reason in network["forward_lower_vacuous"]


def test_remark3_lower_bound_says_something_when_it_can():
    net = spec_bounds([{"kind": "diagonal", "max_abs": 4.0, "max_inv_abs": 8.0}])
    assert net.forward_lower == 0.125 and net.inverse_lower == 0.25  # exact: powers of two
    third = spec_bounds([{"kind": "diagonal", "max_abs": 3.0, "max_inv_abs": 3.0}])
    assert 0 < third.forward_lower <= 1 / 3 and third.forward_lower * 3 <= 1.0
    assert third.forward_lower == pytest.approx(1 / 3, rel=1e-15)
    network = to_json(net)["network"]
    assert network["forward_lower_vacuous"] is None and network["inverse_lower_vacuous"] is None
    assert "vacuous" not in format_report(net, "text")


def test_network_bound_repr_is_short():
    net = spec_bounds([{"kind": "diagonal", "max_abs": 2.0, "max_inv_abs": 0.5},
                       {"kind": "permutation"}])
    assert repr(net) == "NetworkBound(2 blocks, Lip(F) <= 2, Lip(F^-1) <= 0.5)"
    symbolic = spec_bounds([{"kind": "additive"}, {"kind": "affine", "lip_s": 1, "lip_t": 1,
                                                   "scale": "sigmoid", "s_range": [-1, 1]}])
    assert repr(symbolic) == "NetworkBound(2 blocks, Lip(F) <= ?, Lip(F^-1) <= ?)"
    refused = spec_bounds([{"kind": "residual", "lip_g": 1.5}])
    assert repr(refused) == "NetworkBound(1 blocks, Lip(F) <= 2.5, Lip(F^-1) <= ?, 1 refused)"
    third = spec_bounds([{"kind": "diagonal", "max_abs": 1 / 3, "max_inv_abs": 3.0}])
    shown = repr(third).split("<= ")[1].split(",")[0]
    assert float(shown) >= third.forward and len(repr(third)) < 80  # printed bounds round up


def test_spec_may_be_a_json_list_of_blocks(tmp_path, capsys):
    blocks = [{"kind": "additive", "lip_t": 2.5}, {"kind": "diagonal", "diag": [0.5, 4.0]}]
    as_list, as_object = tmp_path / "list.json", tmp_path / "object.json"
    as_list.write_text(json.dumps(blocks))
    as_object.write_text(json.dumps({"blocks": blocks}))
    outputs = []
    for path in (as_list, as_object):
        assert main(["bounds", str(path), "--format", "json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] and len(outputs[0]["blocks"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('"additive"')
    assert main(["bounds", str(bad)]) == 2
    assert "JSON list of blocks" in capsys.readouterr().err


def test_every_bounds_option_states_its_default():
    import argparse

    from lipbound.bounds.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} == {"box", "output_box", "shape", "format", "output",
                                         "progress", "no_progress", "around",
                                         "radius", "bits", "split_budget", "threads"}
    for action in options:
        assert action.help and "(default: " in action.help, action.dest


def test_non_blocks_get_a_type_error():
    from lipbound.bounds.cli import infer_shape
    from lipbound.errors import InputTypeError

    for call in (lambda: bound_model(torch.nn.Linear(2, 2), (2,)),
                 lambda: infer_shape(torch.nn.Linear(2, 2))):
        with pytest.raises(InputTypeError, match="model must be an InvertibleBlock, got Linear"):
            call()
