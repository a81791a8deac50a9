r"""The paper's four training settings: data, network and task loss of each.

=================  =====================================================  ======================
task               setting                                                task loss, metric
=================  =====================================================  ======================
``classifier``     INN classifier (section 4.2, appendix G): Glow-like    cross-entropy, accuracy
                   body, head BatchNorm1d -> ReLU -> Linear on the full
                   feature vector; scikit-learn digits (1, 8, 8), or
                   CIFAR-10 / SVHN (``dataset``)
``flow``           maximum likelihood with uniform dequantization          NLL, bits per dimension
                   (section 4.1.2, appendices D, E): Glow-like or
                   Residual Flow; digits (17 levels), or CIFAR-10 /
                   SVHN / CelebA64 at ``bits`` bits (``dataset``)
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
    Squeeze,
    glow_like,
    halves,
)
from ..blocks import mlp as mlp_subnet
from ..blocks.builders import coupling_block
from ..blocks.residual import (
    LIPSCHITZ_ACTIVATIONS,
    InvertibleResidual,
    residual_conv,
    residual_mlp,
)
from ..blocks.subnets import ACTIVATIONS
from ..diagnostics import checkerboard
from ..errors import InputError
from .datasets import IMAGE_SETS, ImageSet, load_image_set
from .losses import nf_loss

__all__ = ["TASKS", "Task", "augment_batch", "build_network", "channel_statistics",
           "digits_levels", "eval_mode", "image_residual_flow", "regression_data", "vector_glow"]

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
                seed: int = 0, n_hidden: int = 2, activation: str = "relu"
                ) -> InvertibleSequential:
    """Glow on vectors (appendix F): ``n_blocks`` steps of ActNorm, a permutation (``"reverse"``,
    ``"random"`` or ``"none"``) and a coupling on halves with MLP sub-networks (``n_hidden``
    hidden layers of width ``hidden``, ``activation``; appendix F: two, ReLU; Table 4: four,
    swish)."""
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
        blocks.append(coupling_block(part, partial(mlp_subnet, n1, n2, hidden, n_hidden,
                                                   activation),
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

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one network input (without the batch dimension)."""
        return tuple(self.train_x.shape[1:])

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


def augment_batch(levels: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Augment a batch of integer images ``(N, C, H, W)`` on its device with draws from
    ``generator`` (the trainer's seeded noise generator, so a resumed run draws the same).

    ``"crop-flip"`` (appendix G: random cropping and horizontal flipping): a random 32x32 crop of
    the image zero-padded by 4 on each side (paper silent on the padding; 4 is the usual CIFAR-10
    value), then a flip with probability 1/2. ``"translate-flip"`` (appendix D: "10% translation,
    and random horizontal flips"): a shift by a uniform integer in ``[-0.1 H, 0.1 H]`` rows and
    ``[-0.1 W, 0.1 W]`` columns (rounded towards 0) with zero fill, then the flip. ``"flip"``:
    the flip alone; ``"none"``: the batch unchanged. Shifting integer levels before
    dequantisation fills with level 0 (black), as torchvision's transforms fill the 8-bit image.
    """
    if kind == "none":
        return levels
    n, _, h, w = levels.shape
    dev = levels.device
    if kind != "flip":
        mh, mw = (4, 4) if kind == "crop-flip" else (int(0.1 * h), int(0.1 * w))
        padded = F.pad(levels, (mw, mw, mh, mh))
        top = torch.randint(0, 2 * mh + 1, (n,), generator=generator, device=dev)
        left = torch.randint(0, 2 * mw + 1, (n,), generator=generator, device=dev)
        rows = (top[:, None] + torch.arange(h, device=dev))[:, :, None]
        cols = (left[:, None] + torch.arange(w, device=dev))[:, None, :]
        levels = padded[torch.arange(n, device=dev)[:, None, None], :, rows, cols]
        levels = levels.permute(0, 3, 1, 2).contiguous()
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], levels.flip(-1), levels)


class _ImageTask(Task):
    """Images held as integer levels ``(N, C, H, W)`` (uint8) on the host, pinned when the device
    is CUDA; each batch is gathered there, copied with ``non_blocking``, augmented
    (:func:`augment_batch`) and turned into network inputs on the device by :meth:`inputs`.

    The data: scikit-learn's digits (``dataset`` ``None``: 17 grey levels, first 1500 for
    training, 297 for test) or a dataset of :mod:`.datasets` (its train and test splits, reduced
    to ``bits`` bits, level ``k = floor(pixel / 2^(8 - bits))``). Evaluation runs over the test
    set in batches of ``batch_size`` (full-size test sets do not fit one pass).
    """

    def __init__(self, config: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, device, dtype)
        self.pinned = device.type == "cuda"
        if config.dataset is None:
            levels, labels = digits_levels()
            levels = levels.to(torch.uint8)
            train = ImageSet(levels[:DIGITS_TRAIN], labels[:DIGITS_TRAIN])
            test = ImageSet(levels[DIGITS_TRAIN:], labels[DIGITS_TRAIN:])
            self.n_levels = DIGITS_LEVELS
        else:
            kw = {"image_size": config.image_size, "workers": config.workers}
            train, test = (load_image_set(config.dataset, config.data_root, split, **kw)
                           for split in ("train", "test"))
            shift = 8 - config.bits
            train, test = (ImageSet(torch.bitwise_right_shift(s.images, shift), s.labels)
                           for s in (train, test))
            self.n_levels = 2 ** config.bits
        if self.pinned:
            train, test = (ImageSet(s.images.pin_memory(), s.labels) for s in (train, test))
        self.train_set, self.test_set = train, test
        self.in_shape = tuple(train.images.shape[1:])

    @property
    def n_train(self) -> int:
        return len(self.train_set)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.in_shape

    def _to_device(self, t: Tensor) -> Tensor:
        if self.pinned and not t.is_pinned():
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _levels(self, images: Tensor, index: Tensor) -> Tensor:
        return self._to_device(images.index_select(0, index.cpu()))

    def _labels(self, data: ImageSet, index: Tensor) -> Tensor | None:
        return None if data.labels is None else self._to_device(data.labels[index.cpu()])

    def inputs(self, levels: Tensor, noise: torch.Generator | None) -> Tensor:
        """Network inputs from integer levels on the device (``noise``: the dequantisation's
        generator; ``None`` where the task has a fixed rule)."""
        raise NotImplementedError

    def batch(self, index, noise):
        levels = augment_batch(self._levels(self.train_set.images, index), self.config.augment,
                               noise)
        return self.inputs(levels, noise), self._labels(self.train_set, index)

    def _eval_batches(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        n, size = len(self.test_set), max(1, self.config.batch_size)
        gen = torch.Generator().manual_seed(self.config.seed + 2)
        for start in range(0, n, size):
            index = torch.arange(start, min(start + size, n))
            yield (self.test_inputs(self._levels(self.test_set.images, index), gen),
                   self._labels(self.test_set, index))

    def test_inputs(self, levels: Tensor, gen: torch.Generator) -> Tensor:
        """Test inputs: as :meth:`inputs`, with a CPU generator seeded anew per evaluation."""
        return self.inputs(levels, None)

    def eval_data(self):
        parts = list(self._eval_batches())
        y = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
        return "test", torch.cat([p[0] for p in parts]), y

    @torch.no_grad()
    def evaluate(self, flow: InvertibleBlock, head: nn.Module | None) -> dict[str, float]:
        """The metrics on the test set, batch by batch, averaged weighted by batch size (the
        metrics are per-sample means), network and head in evaluation mode."""
        totals: dict[str, Tensor] = {}
        count = 0
        with eval_mode(*(m for m in (flow, head) if m is not None)):
            for x, y in self._eval_batches():
                _, metrics = self.loss(flow, head, x, y)
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0) + v.double() * x.shape[0]
                count += x.shape[0]
        return {f"test_{k}": float(v) / count for k, v in totals.items()}

    def monitor_data(self, n):
        index = torch.arange(min(n, self.n_train))
        y = self._labels(self.train_set, index)
        return self.inputs(self._levels(self.train_set.images, index), None), y, None

    def build_flow(self) -> InvertibleBlock:
        return _image_flow(self.config, self.in_shape)


class ClassifierTask(_ImageTask):
    """INN classification (appendix G): inputs standardised per channel with the training set's
    mean and standard deviation ("standard data normalization"), head ``BatchNorm1d -> ReLU ->
    Linear`` to 10 logits on the full feature vector, cross-entropy."""

    metric = "accuracy"

    def __init__(self, config: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, device, dtype)
        if self.train_set.labels is None:
            raise InputError(f"dataset {config.dataset!r} has no labels for task 'classifier'")
        mean, std = channel_statistics(self.train_set.images)
        self.mean = self.to_device(mean)[:, None, None]
        self.std = self.to_device(std)[:, None, None]

    def inputs(self, levels, noise):
        return (levels.to(self.dtype) - self.mean) / self.std

    def build_head(self) -> nn.Module:
        d = math.prod(self.in_shape)
        return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, 10))

    def objective(self, flow, z, log_det, x, y, head):
        logits = head(z)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(),
                      "accuracy": (logits.argmax(dim=1) == y).to(self.dtype).mean()}


def channel_statistics(images: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation (population, float64) of integer images ``(N, C,
    H, W)``, accumulated in chunks of ``chunk`` images."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    square = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        square += part.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    return mean, (square / count - mean.square()).clamp_min(0).sqrt()


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


class FlowTask(_ImageTask, _LikelihoodTask):
    """Image density with uniform dequantization ``x = (k + u) / L - s``, ``L`` levels, fresh
    ``u ~ U(0, 1)^d`` every step; ``s = 1/2`` (Glow's range ``[-1/2, 1/2)``) when ``centered``,
    else ``s = 0`` (Residual Flows' ``[0, 1)``, appendix E). Test sets are dequantised with a
    generator seeded anew at every evaluation; the monitor uses the cell centres ``u = 1/2``."""

    metric = "bpd"

    def __init__(self, config: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, device, dtype)
        self.n_bins = self.n_levels
        self.shift = 0.5 if config.centered else 0.0

    def _dequantize(self, levels: Tensor, u: Tensor | float) -> Tensor:
        return (levels.to(self.dtype) + u) / self.n_levels - self.shift

    def inputs(self, levels, noise):
        if noise is None:
            return self._dequantize(levels, 0.5)
        return self._dequantize(levels, torch.rand(levels.shape, generator=noise,
                                                   device=self.device, dtype=self.dtype))

    def test_inputs(self, levels, gen):
        u = torch.rand(levels.shape, generator=gen, dtype=self.dtype)
        return self._dequantize(levels, u.to(self.device))


def image_residual_flow(in_shape: tuple[int, ...], levels: int, blocks: int, hidden: int,
                        coeff: float = 0.98, activation: str = "lipswish", actnorm: bool = True,
                        fc_blocks: int = 0, fc_hidden: int = 128, series_terms: int = 8
                        ) -> InvertibleSequential:
    """A multi-scale Residual Flow on images (Chen et al., 2019; paper appendix E, Table 7:
    "Squeeze First True", "Factor Out False", "FC end True").

    Each of ``levels`` levels is a :class:`Squeeze` and ``blocks`` steps of ActNorm and an
    i-ResNet block ``x + g(x)`` with ``g`` = 3x3, 1x1, 3x3 spectrally normalised convolutions
    (width ``hidden``, coefficient ``coeff``, 1-Lipschitz ``activation``); then ``fc_blocks``
    steps of ActNorm and an i-ResNet block whose ``g`` is a spectrally normalised MLP (two hidden
    layers of width ``fc_hidden``) on the flattened features. The log-determinant is the power
    series of :class:`~lipbound.blocks.residual.InvertibleResidual` truncated after
    ``series_terms`` terms with one Hutchinson probe. The convolutions learn their input shape,
    and converge their spectral-norm vectors, at the first forward call (built eagerly at CelebA64
    size, 64 of them took minutes on a CPU).
    """
    c, h, w = (int(v) for v in in_shape)
    residual = partial(InvertibleResidual, log_det="series", n_series_terms=series_terms,
                       n_probes=1)
    layers: list[InvertibleBlock] = []
    for _ in range(levels):
        layers.append(Squeeze(2))
        c, h, w = 4 * c, h // 2, w // 2
        for _ in range(blocks):
            if actnorm:
                layers.append(ActNorm(c))
            layers.append(residual(residual_conv(c, hidden, coeff=coeff, activation=activation)))
    for _ in range(fc_blocks):
        if actnorm:
            layers.append(ActNorm(c))
        g = nn.Sequential(nn.Flatten(), residual_mlp(c * h * w, fc_hidden, n_layers=2,
                                                     coeff=coeff, activation=activation),
                          nn.Unflatten(1, (c, h, w)))
        layers.append(residual(g))
    return InvertibleSequential(*layers)


def _image_flow(c: Any, in_shape: tuple[int, ...]) -> InvertibleBlock:
    """The image model: a multi-scale Residual Flow (``arch`` ``"residual"``) or Glow-like."""
    if c.arch == "residual":
        return image_residual_flow(in_shape, c.levels, c.blocks, c.hidden,
                                   activation=c.activation or "lipswish", actnorm=c.actnorm,
                                   fc_blocks=c.fc_blocks, fc_hidden=c.fc_hidden,
                                   series_terms=c.series_terms)
    return glow_like(in_shape, c.levels, c.blocks, c.hidden, **_model_config(c),
                     activation=c.activation or "relu")


def build_network(config: Any, input_shape: tuple[int, ...]) -> InvertibleBlock:
    """The invertible network a run of ``config`` trains, built without reading its data (the
    shape of one input given): how ``lipbound verify`` rebuilds a checkpoint's network."""
    if issubclass(TASKS[config.task], _ImageTask):
        return _image_flow(config, tuple(input_shape))
    return _vector_flow(config)


def _vector_flow(cfg: Any) -> InvertibleBlock:
    """The 2D model: ``levels * blocks`` couplings (:func:`vector_glow`) or i-ResNet blocks with
    spectral coefficient 0.8 (appendix C), sub-networks of ``subnet_layers`` hidden layers."""
    n = cfg.levels * cfg.blocks
    if cfg.arch == "residual":
        act = cfg.activation or "elu"
        layers: list[InvertibleBlock] = []
        for _ in range(n):
            if cfg.actnorm:
                layers.append(ActNorm(2))
            layers.append(InvertibleResidual(residual_mlp(2, cfg.hidden, cfg.subnet_layers,
                                                          coeff=0.8, activation=act)))
        return InvertibleSequential(*layers)
    return vector_glow(2, n, cfg.hidden, **_model_config(cfg), n_hidden=cfg.subnet_layers,
                       activation=cfg.activation or "relu")


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


#: Augmentations of :func:`augment_batch`.
AUGMENTS = ("none", "flip", "crop-flip", "translate-flip")


def validate_data_settings(cfg: Any, source: str = "config") -> None:
    """Raise :class:`~lipbound.errors.InputError` naming the first bad data or sub-network setting
    of a :class:`~lipbound.training.trainers.TrainConfig` (called by its ``validate``)."""
    image_task = cfg.task in ("classifier", "flow")
    if cfg.dataset is not None:
        if cfg.dataset not in IMAGE_SETS:
            raise InputError(f"{source}: dataset must be one of {list(IMAGE_SETS)} (or null: the "
                             f"digits, and the 2D tasks' own data), got {cfg.dataset!r}")
        if not image_task:
            raise InputError(f"{source}: dataset is for the tasks classifier and flow; task "
                             f"{cfg.task!r} makes its own data, so leave dataset null")
        if cfg.dataset == "celeba64" and cfg.task != "flow":
            raise InputError(f"{source}: dataset 'celeba64' has no class labels; it is for task "
                             f"'flow', got task {cfg.task!r}")
    if not isinstance(cfg.data_root, str) or not cfg.data_root:
        raise InputError(f"{source}: data_root must be a folder name, got {cfg.data_root!r}")
    if not 1 <= cfg.bits <= 8:
        raise InputError(f"{source}: bits must be in 1..8 (bits per pixel of the data), got "
                         f"{cfg.bits}")
    if cfg.bits != 8 and cfg.dataset is None:
        raise InputError(f"{source}: bits {cfg.bits} needs a dataset (the digits have 17 grey "
                         "levels, the 2D tasks continuous data)")
    if cfg.image_size is not None and (cfg.dataset is None or cfg.image_size < 1):
        raise InputError(f"{source}: image_size must be null or, with a dataset, >= 1 (CelebA's "
                         f"side after the centre crop), got {cfg.image_size}")
    if cfg.augment not in AUGMENTS:
        raise InputError(f"{source}: augment must be one of {list(AUGMENTS)}, got "
                         f"{cfg.augment!r}")
    if cfg.augment != "none" and not image_task:
        raise InputError(f"{source}: augment is for the image tasks (classifier, flow), got "
                         f"task {cfg.task!r}")
    for key, low in (("workers", 0), ("subnet_layers", 1), ("fc_blocks", 0), ("fc_hidden", 1),
                     ("series_terms", 1)):
        if getattr(cfg, key) < low:
            raise InputError(f"{source}: {key} must be >= {low}, got {getattr(cfg, key)}")
    allowed = LIPSCHITZ_ACTIVATIONS if cfg.arch == "residual" else tuple(ACTIVATIONS)
    if cfg.activation is not None and cfg.activation not in allowed:
        raise InputError(f"{source}: activation of arch {cfg.arch!r} must be one of "
                         f"{list(allowed)} (or null), got {cfg.activation!r}")
    if cfg.fc_blocks and not (cfg.arch == "residual" and cfg.task == "flow"):
        raise InputError(f"{source}: fc_blocks are for arch 'residual' with task 'flow', got "
                         f"arch {cfg.arch!r}, task {cfg.task!r}")


#: Task name -> class.
TASKS: dict[str, type[Task]] = {
    "classifier": ClassifierTask,
    "flow": FlowTask,
    "regression": RegressionTask,
    "density": DensityTask,
}
