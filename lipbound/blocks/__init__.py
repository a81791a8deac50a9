"""The fast (torch) face of every invertible block; the contract is in :mod:`.base`."""

from .base import ConvergenceInfo, InvertibleBlock, require_block
from .builders import (
    coupling_mlp,
    figure1_chain,
    glow_like,
    randomize_parameters,
    residual_flow,
)
from .coupling import AdditiveCoupling, AffineCoupling
from .linear import ActNorm, DiagonalScaling, Invertible1x1Conv
from .ode import NeuralODE, ODEFunc
from .partition import ChannelPartition, MaskPartition, Partition, checkerboard, halves
from .reshape import Permutation, Squeeze
from .residual import (
    InvertibleResidual,
    SpectralNormConv2d,
    SpectralNormLinear,
    residual_conv,
    residual_mlp,
)
from .scale import ExpScale, IdentityScale, ScaleFunction, SigmoidScale, SoftClampScale, make_scale
from .sequential import InvertibleSequential
from .spectral import refresh_spectral_norm
from .subnets import Constant, conv_subnet, mlp

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "ChannelPartition",
    "Constant",
    "ConvergenceInfo",
    "DiagonalScaling",
    "ExpScale",
    "IdentityScale",
    "Invertible1x1Conv",
    "InvertibleBlock",
    "InvertibleResidual",
    "InvertibleSequential",
    "MaskPartition",
    "NeuralODE",
    "ODEFunc",
    "Partition",
    "Permutation",
    "ScaleFunction",
    "SigmoidScale",
    "SoftClampScale",
    "SpectralNormConv2d",
    "SpectralNormLinear",
    "Squeeze",
    "checkerboard",
    "conv_subnet",
    "coupling_mlp",
    "figure1_chain",
    "glow_like",
    "halves",
    "make_scale",
    "mlp",
    "randomize_parameters",
    "refresh_spectral_norm",
    "residual_conv",
    "residual_flow",
    "residual_mlp",
    "require_block",
]
