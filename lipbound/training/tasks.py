r"""The paper's four training settings: data, network and task loss of each.

=================  =====================================================  ======================
task               setting                                                task loss, metric
=================  =====================================================  ======================
``classifier``     INN classifier (section 4.2, appendix G): Glow-like    cross-entropy, accuracy
                   body, head BatchNorm1d -> ReLU -> Linear on the full
                   feature vector; scikit-learn digits (1, 8, 8)
``flow``           maximum likelihood with uniform dequantization          NLL, bits per dimension
                   (section 4.1.2, appendix D) on digits (17 levels)
``regression``     2D toy regression (section 4.2, appendix F): x ~ N(0,   MSE, MSE
                   I), y = (y1, x2), y1 ~ N(0, 1e-24)
``density``        2D checkerboard density (section 4.1, appendix C)      NLL, nats per sample
=================  =====================================================  ======================

The likelihood is the change of variables with a standard normal base (eq. 7, computed by
:func:`~lipbound.training.nf_loss`): ``log p(x) = log N(F(x); 0, I) + log|det J_F(x)|``. For data
quantised to ``L`` levels and dequantised as ``x = (k + u) / L - 1/2``, ``u ~ U(0, 1)^d``, the
discrete probability of the levels ``k`` is at least ``L^-d p(x)`` in expectation over ``u``
(Jensen), so ``bpd = (-log p(x) + d log L) / (d log 2)`` bounds the bits per dimension from above.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import (
    ActNorm,
    InvertibleBlock,
    InvertibleSequential,
    Permutation,
    glow_like,
    halves,
    residual_flow,
)
from ..blocks import mlp as mlp_subnet
from ..blocks.builders import coupling_block
from ..diagnostics import checkerboard
from ..errors import InputError
from .losses import nf_loss

__all__ = ["TASKS", "Task", "digits_levels", "eval_mode", "regression_data",
           "vector_glow"]

#: Grey levels of scikit-learn's digits (0..16).
DIGITS_LEVELS = 17
#: Digits used for training; the remaining 297 are the test set.
DIGITS_TRAIN = 1500
#: Variance of y1 in the toy regression (appendix F).
REGRESSION_EPS = 1e-24


def digits_levels() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 digits as integer grey levels ``(1797, 1, 8, 8)`` and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits presets need scikit-learn: pip install scikit-learn") from err
    data = load_digits()
    levels = torch.as_tensor(data.data, dtype=torch.int64).reshape(-1, 1, 8, 8)
    return levels, torch.as_tensor(data.target, dtype=torch.int64)


def vector_glow(d: int, n_blocks: int, hidden: int, coupling: str = "affine",
                mixing: str = "reverse", scale: str = "sigmoid", actnorm: bool = True,
                seed: int = 0) -> InvertibleSequential:
    """Glow on vectors (appendix F): ``n_blocks`` steps of ActNorm, a permutation (``"reverse"``,
    ``"random"`` or ``"none"``) and a coupling on halves with ReLU MLP sub-networks (two hidden
    layers of width ``hidden``)."""
    if mixing not in ("reverse", "random", "none"):
        raise InputError(f"mixing of a vector model must be 'reverse', 'random' or 'none', "
                         f"got {mixing!r}")
    blocks: list[InvertibleBlock] = []
    for i in range(n_blocks):
        if actnorm:
            blocks.append(ActNorm(d))
        if mixing != "none":
            blocks.append(Permutation(d, mixing, seed=seed + i))
        part = halves(d, flip=mixing == "none" and i % 2 == 1)
        n1, n2 = len(part.cond_index), len(part.active_index)
        blocks.append(coupling_block(part, partial(mlp_subnet, n1, n2, hidden, 2, "relu"),
                                     coupling, scale))
    return InvertibleSequential(*blocks)


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in evaluation mode, restoring their modes afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class Task:
    """One training setting: its data (on ``device`` in ``dtype``), network and task loss.

    The trainer runs the network once per step (:meth:`network_pass`, or the FD regularizer's
    clean pass) and hands ``z = F(x)`` (and ``log|det J_F(x)|`` when :attr:`needs_log_det`) to
    :meth:`objective`. Subclasses set :attr:`metric` and implement :meth:`build_flow` and
    :meth:`objective`; ``train_x``/``train_y`` are indexed by the trainer's data order.
    """

    metric = "loss"
    needs_log_det = False

    def __init__(self, config: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.config, self.device, self.dtype = config, device, dtype
        self.train_x: Tensor
        self.train_y: Tensor | None = None
        self.test_x: Tensor
        self.test_y: Tensor | None = None

    def to_device(self, t: Tensor) -> Tensor:
        return t.to(device=self.device, dtype=self.dtype if t.is_floating_point() else t.dtype)

    @property
    def n_train(self) -> int:
        return self.train_x.shape[0]

    def build_flow(self) -> InvertibleBlock:
        raise NotImplementedError

    def build_head(self) -> nn.Module | None:
        return None

    def batch(self, index: Tensor, noise: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """The training batch at ``index`` (network input, target)."""
        index = index.to(self.device)
        y = None if self.train_y is None else self.train_y[index]
        return self.train_x[index], y

    def network_pass(self, flow: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``F(x)``, with ``log|det J_F(x)|`` when the objective needs it (else ``None``)."""
        return flow.forward_and_log_det(x) if self.needs_log_det else (flow(x), None)

    def objective(self, flow: nn.Module, z: Tensor, log_det: Tensor | None, x: Tensor,
                  y: Tensor | None, head: nn.Module | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The task loss and metrics (tensors, no host sync) from the network output ``z``."""
        raise NotImplementedError

    def loss(self, flow: nn.Module, head: nn.Module | None, x: Tensor, y: Tensor | None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """The task loss of a batch through ``flow`` (the network or its memory-saving view)."""
        return self.objective(flow, *self.network_pass(flow, x), x, y, head)

    def eval_data(self) -> tuple[str, Tensor, Tensor | None]:
        """The evaluation set: a name prefixed to the metrics, inputs, targets."""
        return "test", self.test_x, self.test_y

    @torch.no_grad()
    def evaluate(self, flow: InvertibleBlock, head: nn.Module | None) -> dict[str, float]:
        """The metrics on :meth:`eval_data`, network and head in evaluation mode."""
        name, x, y = self.eval_data()
        with eval_mode(*(m for m in (flow, head) if m is not None)):
            _, metrics = self.loss(flow, head, x, y)
        return {f"{name}_{k}": float(v) for k, v in metrics.items()}

    def monitor_data(self, n: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The monitor's fixed batch, its targets, and latent points (``None``: base samples)."""
        y = None if self.train_y is None else self.train_y[:n]
        return self.train_x[:n], y, None


def _model_config(cfg: Any) -> dict[str, Any]:
    return {"coupling": cfg.coupling, "mixing": cfg.mixing, "scale": cfg.scale,
            "actnorm": cfg.actnorm, "seed": cfg.seed}


class ClassifierTask(Task):
    """Digits classification: standardised grey levels, first 1500 for training, 297 for test."""

    metric = "accuracy"

    def __init__(self, config: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, device, dtype)
        levels, labels = digits_levels()
        x = levels.to(torch.float64) / (DIGITS_LEVELS - 1)
        train = x[:DIGITS_TRAIN]
        x = (x - train.mean()) / train.std()
        self.train_x = self.to_device(x[:DIGITS_TRAIN])
        self.test_x = self.to_device(x[DIGITS_TRAIN:])
        self.train_y = self.to_device(labels[:DIGITS_TRAIN])
        self.test_y = self.to_device(labels[DIGITS_TRAIN:])

    def build_flow(self) -> InvertibleBlock:
        c = self.config
        return glow_like((1, 8, 8), c.levels, c.blocks, c.hidden, **_model_config(c))

    def build_head(self) -> nn.Module:
        d = self.train_x[0].numel()
        return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, 10))

    def objective(self, flow, z, log_det, x, y, head):
        logits = head(z)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(),
                      "accuracy": (logits.argmax(dim=1) == y).to(self.dtype).mean()}


class _LikelihoodTask(Task):
    """Maximum likelihood: the loss is the mean negative log-likelihood (eq. 7)."""

    metric = "nll"
    needs_log_det = True

    #: Quantisation levels of the data for bits per dimension (``None``: continuous data).
    n_bins: int | None = None

    def objective(self, flow, z, log_det, x, y, head):
        nf = nf_loss(flow, x, n_bins=self.n_bins, z=z, log_det=log_det)
        metrics = {"loss": nf.nll.detach(), "nll": nf.nll.detach()}
        if self.n_bins is not None:
            metrics["bpd"] = nf.bits_per_dim
        return nf.loss, metrics


class FlowTask(_LikelihoodTask):
    """Digits density with uniform dequantization, ``x = (k + u) / 17 - 1/2``, fresh ``u`` every
    step; the test set is dequantised once (seeded)."""

    metric = "bpd"
    n_bins = DIGITS_LEVELS

    def __init__(self, config: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, device, dtype)
        levels, _ = digits_levels()
        self.train_levels = self.to_device(levels[:DIGITS_TRAIN])
        gen = torch.Generator().manual_seed(config.seed + 2)
        test = levels[DIGITS_TRAIN:]
        self.test_x = self.to_device(self._dequantize(test, torch.rand(test.shape, generator=gen,
                                                                        dtype=torch.float64)))
        self.train_x = self.to_device(self._dequantize(self.train_levels, 0.5))

    @staticmethod
    def _dequantize(levels: Tensor, u: Tensor | float) -> Tensor:
        return (levels + u) / DIGITS_LEVELS - 0.5

    def batch(self, index, noise):
        k = self.train_levels[index.to(self.device)]
        u = torch.rand(k.shape, generator=noise, device=self.device, dtype=self.dtype)
        return self._dequantize(k, u).to(self.dtype), None

    def build_flow(self) -> InvertibleBlock:
        c = self.config
        return glow_like((1, 8, 8), c.levels, c.blocks, c.hidden, **_model_config(c))


def _vector_flow(cfg: Any) -> InvertibleBlock:
    n = cfg.levels * cfg.blocks
    if cfg.arch == "residual":
        return residual_flow((2,), n, cfg.hidden, coeff=0.8, actnorm=cfg.actnorm)
    return vector_glow(2, n, cfg.hidden, **_model_config(cfg))


class DensityTask(_LikelihoodTask):
    """The 2D checkerboard (``n_train`` points, and 2000 test points)."""

    def __init__(self, config: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, device, dtype)
        gen = torch.Generator().manual_seed(config.seed + 2)
        self.train_x = self.to_device(checkerboard(config.n_train, generator=gen))
        self.test_x = self.to_device(checkerboard(2000, generator=gen))

    def build_flow(self) -> InvertibleBlock:
        return _vector_flow(self.config)


def regression_data(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Appendix F, eqs. (13)-(14): ``x ~ N(0, I_2)``, ``y = (y1, x2)``, ``y1 ~ N(0, 1e-24)``."""
    x = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    y1 = math.sqrt(REGRESSION_EPS) * torch.randn(n, generator=generator, dtype=torch.float64)
    return x, torch.stack([y1, x[:, 1]], dim=1)


class RegressionTask(Task):
    """The 2D toy regression ``F(x) ~ y``: mean squared error, evaluated on the training set (the
    task is to fit it; the monitor shows what the fit does to the inverse)."""

    metric = "mse"

    def __init__(self, config: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, device, dtype)
        x, y = regression_data(config.n_train, torch.Generator().manual_seed(config.seed + 2))
        self.train_x, self.train_y = self.to_device(x), self.to_device(y)

    def build_flow(self) -> InvertibleBlock:
        return _vector_flow(self.config)

    def objective(self, flow, z, log_det, x, y, head):
        mse = F.mse_loss(z, y)
        return mse, {"loss": mse.detach(), "mse": mse.detach()}

    def eval_data(self):
        return "train", self.train_x, self.train_y

    def monitor_data(self, n):
        """The first ``n`` inputs and targets, the targets also as the latent points: ``F^-1(y)``
        is where the paper saw the inverse explode (Figure 6)."""
        return self.train_x[:n], self.train_y[:n], self.train_y[:n]


#: Task name -> class.
TASKS: dict[str, type[Task]] = {
    "classifier": ClassifierTask,
    "flow": FlowTask,
    "regression": RegressionTask,
    "density": DensityTask,
}
