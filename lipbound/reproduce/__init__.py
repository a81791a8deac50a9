"""Reproductions of the paper's figures and tables (issue "Reproduce the paper's experiments").

Each experiment lives in a module here with a ``run(settings) -> ExperimentResult`` function
(:mod:`.common`); the scripts in ``paper_figures/`` are thin entry points over them, and
``python -m paper_figures all`` runs every experiment and writes ``paper_figures/RESULTS.md``.
"""

from __future__ import annotations

from .common import (
    SCALES,
    Claim,
    ExperimentResult,
    Settings,
    claim_at_least,
    claim_less_than,
    main,
    run_experiment,
)

__all__ = ["EXPERIMENTS", "SCALES", "Claim", "ExperimentResult", "Settings", "claim_at_least",
           "claim_less_than", "main", "run_experiment"]

#: script name -> module of :mod:`lipbound.reproduce` holding its ``run``, in the order
#: ``python -m paper_figures all`` runs them.
EXPERIMENTS: dict[str, str] = {
    "table3": "table3",
    "figure2_checkerboard": "checkerboard",
    "figure6_regression": "regression",
    "table1_flows": "flows",
    "table2_classifiers": "classifiers",
    "table11_fd_overhead": "fd_overhead",
    "figure18_gradient_angles": "gradient_angles",
    "figure4_ood": "ood",
    "figure11_attack": "attack",
}
