"""Measurements on any invertible model: Jacobian spectra, reconstruction statistics and where
they break, the invertibility attack, 2D maps, and the datasets they run on."""

from ..autodiff import batch_jacobian
from .attack import AttackResult, dequantization_cell, invertibility_attack
from .data import checkerboard, load_digits, load_images
from .maps import GridMaps, grid_maps, plot_grid_maps
from .reconstruction import (
    DIRECTIONS,
    Failure,
    ReconstructionStats,
    error_summary,
    execution_step,
    reconstruction_stats,
    round_trip_trace,
)
from .report import (
    AttackSettings,
    Diagnosis,
    OracleSettings,
    diagnose,
    diagnosis_to_json,
    format_diagnosis,
)
from .spectrum import (
    SigmaEstimate,
    Spectrum,
    jacobian,
    jacobian_rowwise,
    sigma_max,
    sigma_min,
    singular_values,
    spectrum,
)
from .views import Inverted

__all__ = [
    "DIRECTIONS",
    "AttackResult",
    "AttackSettings",
    "Diagnosis",
    "Failure",
    "GridMaps",
    "Inverted",
    "OracleSettings",
    "ReconstructionStats",
    "SigmaEstimate",
    "Spectrum",
    "batch_jacobian",
    "checkerboard",
    "dequantization_cell",
    "diagnose",
    "diagnosis_to_json",
    "error_summary",
    "execution_step",
    "format_diagnosis",
    "grid_maps",
    "invertibility_attack",
    "jacobian",
    "jacobian_rowwise",
    "load_digits",
    "load_images",
    "plot_grid_maps",
    "reconstruction_stats",
    "round_trip_trace",
    "sigma_max",
    "sigma_min",
    "singular_values",
    "spectrum",
]
