"""``lipbound example NAME``: write a small model and matching inputs to try the other commands on.

Each example writes ``NAME.pt`` (the model, :func:`lipbound.io.save_model`) and ``NAME.npz`` (its
inputs, batch first, as the array ``x``) into ``--out`` (default: the current directory), and
prints the commands to run on them. The models are untrained, with fixed seeds and non-trivial
parameters (:func:`~lipbound.blocks.randomize_parameters`), and small enough that every command
finishes in seconds on a CPU.

* ``figure1``: the paper's Figure 1 toy, 15 affine couplings with ``g = 0.1`` on ``R^2``; the
  input ``x = (1, 1)``. The Jacobian's smallest singular value is ``1e-15``: unstable by design.
* ``toy2d``: a 2D affine coupling flow (4 couplings, MLP sub-networks); 500 points of the paper's
  checkerboard data (section 4.1).
* ``residual``: a 2D i-ResNet (4 residual blocks, spectral-norm coefficient 0.8); 500 checkerboard
  points.
* ``glow``: a Glow-like image flow (2 levels x 2 steps of ActNorm, 1x1 convolution and affine
  coupling) on 3 x 8 x 8 images; 16 dequantized random 8-bit images in [0, 1].
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .blocks import (
    InvertibleBlock,
    coupling_mlp,
    figure1_chain,
    glow_like,
    randomize_parameters,
    residual_flow,
)
from .diagnostics.data import checkerboard
from .errors import InputError
from .io import check_output_folder, save_model

__all__ = ["EXAMPLES", "Example", "add_arguments", "run", "write_example"]


@dataclass(frozen=True)
class Example:
    """A named example: what it is, how to build the model and its inputs, what to try."""

    description: str
    model: Callable[[torch.Generator], InvertibleBlock]
    inputs: Callable[[torch.Generator], Tensor]
    #: commands to try, with ``{model}`` and ``{inputs}`` for the written files
    try_commands: tuple[str, ...]


def _randomized(model: InvertibleBlock, std: float, gen: torch.Generator) -> InvertibleBlock:
    return randomize_parameters(model, std=std, generator=gen)


def _images(gen: torch.Generator) -> Tensor:
    """16 random 8-bit 3 x 8 x 8 images, dequantized to the centres of their cells in [0, 1]."""
    levels = torch.randint(0, 256, (16, 3, 8, 8), generator=gen)
    return (levels.to(torch.float64) + 0.5) / 256


EXAMPLES: dict[str, Example] = {
    "figure1": Example(
        "the paper's Figure 1 toy: 15 affine couplings, g = 0.1, input (1, 1)",
        lambda gen: figure1_chain(15, "affine"),
        lambda gen: torch.ones(1, 2, dtype=torch.float64),
        ("lipbound verify {model} {inputs} --precision float32",
         "lipbound check --model {model}"),
    ),
    "toy2d": Example(
        "2D affine coupling flow (4 couplings, MLP sub-networks), 500 checkerboard points",
        lambda gen: _randomized(coupling_mlp(2, n_blocks=4, hidden=32), 0.1, gen),
        lambda gen: checkerboard(500, generator=gen),
        ("lipbound diagnose {model} {inputs}",
         "lipbound bounds {model} --box -4 4",
         "lipbound check --model {model}"),
    ),
    "residual": Example(
        "2D i-ResNet (4 residual blocks, coefficient 0.8), 500 checkerboard points",
        lambda gen: _randomized(residual_flow((2,), n_blocks=4, hidden=32), 0.1, gen),
        lambda gen: checkerboard(500, generator=gen),
        ("lipbound bounds {model}",
         "lipbound diagnose {model} {inputs}"),
    ),
    "glow": Example(
        "Glow-like affine image flow, 2 levels x 2 steps, input 3 x 8 x 8, 16 images",
        lambda gen: _randomized(glow_like((3, 8, 8), levels=2, steps=2, hidden=16,
                                          coupling="affine"), 0.05, gen),
        _images,
        ("lipbound check --model {model} --shape 3 8 8",
         "lipbound bounds {model} --shape 3 8 8 --box 0 1",
         "lipbound diagnose {model} {inputs}"),
    ),
}


def write_example(name: str, out: str | Path = ".", seed: int = 0) -> tuple[Path, Path]:
    """Write the example ``name`` (one of :data:`EXAMPLES`) as ``out/NAME.pt`` and
    ``out/NAME.npz``; returns the two paths."""
    if name not in EXAMPLES:
        raise InputError(f"example must be one of {sorted(EXAMPLES)}, got {name!r}")
    example = EXAMPLES[name]
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {str(out)!r} cannot be used as a folder ({err})") from err
    gen = torch.Generator().manual_seed(seed)
    model = example.model(gen).to(torch.float64).eval()
    x = example.inputs(gen).to(torch.float64)
    model_path, inputs_path = out / f"{name}.pt", out / f"{name}.npz"
    save_model(model, model_path)
    np.savez(inputs_path, x=x.numpy())
    return model_path, inputs_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``lipbound example``."""
    p.description = ("Write a small model (NAME.pt) and matching inputs (NAME.npz) to try the "
                     "other commands on.")
    p.epilog = "examples:\n" + "\n".join(f"  {name:<9} {ex.description}"
                                         for name, ex in EXAMPLES.items())
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("name", metavar="NAME", choices=sorted(EXAMPLES),
                   help="one of: " + ", ".join(EXAMPLES))
    p.add_argument("--out", metavar="DIR", default=".",
                   help="folder to write NAME.pt and NAME.npz into, created if missing "
                        "(default: the current directory)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the parameters and inputs (default: 0)")


def run(args: argparse.Namespace) -> int:
    """Write the example and print what to try next."""
    check_output_folder(args.out, "--out")
    model_path, inputs_path = write_example(args.name, args.out, args.seed)
    x = np.load(inputs_path)["x"]
    print(f"lipbound example {args.name}: {EXAMPLES[args.name].description}")
    print(f"wrote {model_path} (the model) and {inputs_path} (inputs, shape {x.shape})")
    print("try:")
    for cmd in EXAMPLES[args.name].try_commands:
        print("  " + cmd.format(model=model_path, inputs=inputs_path))
    return 0
