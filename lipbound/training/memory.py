r"""Memory-saving gradients that check themselves (Gomez et al., 2017; paper section 4.2).

:func:`memory_saving` wraps an invertible model ``F = F_L o ... o F_1``. Its forward keeps no
activations: only the network input ``x`` (which the caller holds anyway) and the output
``z = F(x)``. Its backward walks the blocks last to first; at block ``k`` it reconstructs the
block's input from its output through the analytic inverse, ``x_{k-1} = F_k^{-1}(x_k)``,
recomputes ``F_k`` with autograd from that input, and passes the gradient on. The log-determinant
(for :func:`~lipbound.training.losses.nf_loss`) and the inverse direction (for the inverse term of
:func:`~lipbound.training.regularizers.fd_regularizer`) work the same way, the inverse walking the
blocks first to last and reconstructing through the forward maps. Peak activation memory is that
of one coupling, or of a run of at most :data:`MAX_RUN` blocks without sub-networks (ActNorm,
1x1 convolution, ...) rebuilt with one autograd call, whatever the depth.

* Couplings (eqs. 3 and 4) evaluate their sub-networks once per backward: the conditioning part
  is the same on both sides of the block, so one evaluation both inverts the block and rebuilds its
  graph (:meth:`~lipbound.blocks.coupling.AdditiveCoupling.conditioner`). ActNorm, 1x1
  convolutions (plain and LU), permutations, squeeze and diagonal scaling invert analytically.
* Blocks with iterative inverses (i-ResNet fixed point, neural ODE) keep their input instead, as
  the paper does: their recomputation starts from the stored input, which also serves as a
  checkpoint (the reconstruction that reached it is checked against it).
* Parameters enter the pass as inputs of one :class:`torch.autograd.Function`, so their
  gradients arrive through autograd's normal path (``AccumulateGrad``): optimizers, gradient
  clipping, hooks and ``DistributedDataParallel`` work unchanged (DDP averages only what runs
  through its call: use ``ddp(x, with_log_det=True)`` and ``ddp(y, inverse=True)``, as
  :func:`~lipbound.training.nf_loss` and :func:`~lipbound.training.fd_regularizer` do, not
  ``ddp.module.forward_and_log_det``; :mod:`lipbound.training.ddp`). The backward recomputes each
  block against detached aliases of its parameters (:func:`detached_parameters`), so a
  parameter's hooks fire once, on its whole gradient, as with plain autograd. Double backward
  (``create_graph=True``, as gradient penalties need) raises :class:`MemorySavingError`.
* ActNorm's data-dependent initialisation runs in a plain no-grad forward before the first
  memory-saving pass (so the backward never re-initialises). The RNG state before every block
  whose dropout layers are in training mode (their own mode, not the wrapper's) is saved and
  restored when recomputing it (as :func:`torch.utils.checkpoint.checkpoint` does), so dropout
  in sub-networks draws the same masks (the CPU state is about 5 KB per block). The state before
  the first block is always saved, so the fallback replays the forward exactly. With
  ``preserve_rng=False`` and dropout in training mode the recomputation draws other masks and
  cannot be right: every such backward fails the check (``"fallback"`` then gives the true
  gradient, ``"raise"`` raises). Spectral normalisation
  (i-ResNet) is frozen while recomputing, so the power iteration the forward advanced is not
  advanced again. BatchNorm in sub-networks updates its running statistics again when a block is
  recomputed (as with ``torch.utils.checkpoint``). A pass run under ``torch.autocast`` (mixed
  precision) records the autocast state, and the backward reconstructs and recomputes every
  block under the same one, so the recomputed map is the one the forward ran.

**The self-check.** Memory-saving backprop is only right where the inverse is accurate. Every
backward measures the relative reconstruction error of the network input,
``max_i ||x_i - xhat_i|| / ||x_i||`` (free: the walk ends there), and of the output of every block
that keeps its input (free: the kept input recomputes it). On every ``check_every``-th pass
(default: every 10th; 1: every pass) it also measures the reconstructed input of every block,
although the pass keeps no activations:
the forward stores a sketch of each block's input, ``m = 2`` random projections
``<x_{k,i}, w_j>`` with ``w_j ~ N(0, I)`` and the norm ``||x_{k,i}||`` per sample
(``3 B`` numbers per block, not the activations: they grow with depth, which is why they are kept
on a schedule), and the backward estimates
``||xhat_k - x_k|| ~ sqrt(mean_j <xhat_k - x_k, w_j>^2)`` (exact in expectation; a large error
escapes only if it is nearly orthogonal to both directions). The output of the first block is
sketched and checked on every pass whatever ``check_every`` (unless 0): a first block that
rescales, such as ActNorm centring data of large mean, makes the network input's relative error
blind to errors above it. All of them reach the host in one transfer. Above ``tol``, or NaN or
Inf, the ``policy`` decides:

``"fallback"`` (default)
    discard the memory-saving gradients and redo the step with ordinary autograd from the stored
    network input (that step then needs ordinary autograd's memory), so the gradient is the true
    one; :attr:`MemorySaving.fallbacks` counts it.
``"raise"``
    :class:`MemorySavingError` naming the first failing block (in the order the backward visits
    them) and its error; the true activations are recomputed to find it.
``"warn"``
    a :class:`MemorySavingWarning` naming the block; the memory-saving gradient is kept.

Example::

    model = memory_saving(glow_like((3, 32, 32)))
    z, log_det = model.forward_and_log_det(x)
    loss = 0.5 * z.pow(2).flatten(1).sum(1).mean() - log_det.mean()
    loss.backward()            # parameters get their .grad as usual
    model.fallbacks, model.last_check
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..blocks import (
    ActNorm,
    InvertibleBlock,
    NeuralODE,
    SpectralNormConv2d,
    SpectralNormLinear,
)
from ..blocks.base import require_block, zeros_log_det
from ..blocks.coupling import _Coupling
from ..blocks.residual import frozen_spectral_norm
from ..errors import InputError, InputTypeError, LipboundError

__all__ = [
    "POLICIES",
    "MemorySaving",
    "MemorySavingError",
    "MemorySavingWarning",
    "ReconstructionCheck",
    "detached_parameters",
    "fork_rng",
    "memory_saving",
    "relative_error",
    "device_rng_state",
    "set_device_rng_state",
]

POLICIES = ("fallback", "raise", "warn")


class MemorySavingError(LipboundError, RuntimeError):
    """The memory-saving backward reconstructed an activation wrongly (policy ``"raise"``)."""


class MemorySavingWarning(RuntimeWarning):
    """The memory-saving backward reconstructed an activation wrongly (policy ``"warn"``)."""


@dataclass(frozen=True)
class ReconstructionCheck:
    """What one memory-saving backward measured.

    Attributes:
        direction: ``"forward"`` or ``"inverse"``, the pass that was differentiated.
        input_error: relative reconstruction error of the network input (``nan`` when the
            reconstruction held NaN, ``inf`` when it held Inf).
        block_errors: leaf-block index (forward order) -> relative error of the input that block
            reconstructed (through its inverse in a forward pass, its forward in an inverse pass):
            estimated from the sketch on checked passes; exact where the next block keeps its
            input.
        tol: the tolerance applied.
        passed: whether every error was finite and at most ``tol``.
        fell_back: whether the gradient was recomputed with ordinary autograd (policy fallback).
    """

    direction: str
    input_error: float
    block_errors: dict[int, float] = field(default_factory=dict)
    tol: float = 0.0
    passed: bool = True
    fell_back: bool = False


def relative_error(approx: Tensor, exact: Tensor) -> Tensor:
    """``max_i ||approx_i - exact_i|| / ||exact_i||`` over the batch, a 0-dim tensor on the device
    (no host sync); an all-zero sample counts its absolute error. Half precisions are measured in
    float32 so the norms do not overflow. NaN or Inf in ``approx`` give NaN or Inf."""
    dtype = torch.float32 if exact.dtype in (torch.float16, torch.bfloat16) else exact.dtype
    diff = torch.linalg.vector_norm((approx - exact).flatten(1), dim=1, dtype=dtype)
    ref = torch.linalg.vector_norm(exact.flatten(1), dim=1, dtype=dtype)
    return (diff / torch.where(ref > 0, ref, torch.ones_like(ref))).max()


#: Random projections per sample in a block-input sketch.
SKETCH_DIRECTIONS = 2


def _sketch_matrix(cache: dict, like: Tensor) -> Tensor:
    """``(D, m)`` Gaussian directions for inputs shaped like ``like`` (drawn once, fixed seed)."""
    dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    key = (tuple(like.shape[1:]), dtype, like.device)
    if key not in cache:
        gen = torch.Generator().manual_seed(len(cache))
        w = torch.randn(like[0].numel(), SKETCH_DIRECTIONS, generator=gen, dtype=torch.float64)
        cache[key] = w.to(dtype=dtype, device=like.device)
    return cache[key]


def _sketch(cache: dict, v: Tensor) -> Tensor:
    """``(B, m + 1)``: the projections of each sample on the directions, then its norm."""
    w = _sketch_matrix(cache, v)
    flat = v.flatten(1).to(w.dtype)
    return torch.cat([flat @ w, torch.linalg.vector_norm(flat, dim=1, keepdim=True)], dim=1)


def _project(cache: dict, v: Tensor) -> Tensor:
    """``(B, m)``: the projections of each sample of ``v`` on the sketch's directions."""
    w = _sketch_matrix(cache, v)
    return v.flatten(1).to(w.dtype) @ w


def _sketch_errors(projections: list[Tensor], sketches: list[Tensor]) -> Tensor:
    """Estimated ``max_i ||v_i - x_i|| / ||x_i||`` for each of ``L`` blocks, shape ``(L,)`` on
    the device, from the projections of ``v`` (:func:`_project`) and the sketches of ``x``
    (:func:`_sketch`): one evaluation for all blocks."""
    sketch = torch.stack(sketches)
    est = (torch.stack(projections) - sketch[..., :-1]).pow(2).mean(dim=2).sqrt()
    norm = sketch[..., -1]
    return (est / torch.where(norm > 0, norm, torch.ones_like(norm))).amax(dim=1)


def _default_tol(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) ** 0.5


def _parameter_slots(module: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(submodule, name)`` of every parameter entry in ``module`` (shared ones repeated)."""
    return [(m, name) for m in module.modules() for name, p in m._parameters.items()
            if p is not None]


@contextlib.contextmanager
def detached_parameters(slots: Iterable[tuple[nn.Module, str]], wanted: dict[int, int]
                        ) -> Iterator[dict[int, Tensor]]:
    """Within the context, every parameter in ``slots`` whose ``id`` is in ``wanted`` is replaced
    in its module by a detached leaf sharing its storage (one per parameter, also where it is
    shared). Yields ``id(parameter) -> leaf``.

    The backward recomputes the blocks against these leaves: differentiating them runs none of
    the parameter's own hooks (``Tensor.register_hook``, DDP's), which fire once, when the
    :class:`torch.autograd.Function` hands the summed gradients to the real parameters."""
    aliases: dict[int, Tensor] = {}
    swapped: dict[tuple[int, str], tuple[nn.Module, str, Tensor]] = {}
    for m, name in slots:
        p = m._parameters[name]
        if p is not None and id(p) in wanted and (id(m), name) not in swapped:
            if id(p) not in aliases:
                aliases[id(p)] = nn.Parameter(p.detach(), requires_grad=True)
            swapped[id(m), name] = (m, name, p)
    try:
        for m, name, p in swapped.values():
            m._parameters[name] = aliases[id(p)]
        yield aliases
    finally:
        for m, name, p in swapped.values():
            m._parameters[name] = p


class _Step:
    """One leaf block run in one direction: ``run`` maps, ``undo`` reconstructs its input."""

    def __init__(self, block: InvertibleBlock, index: int, inverse: bool) -> None:
        self.block, self.index, self.inverse = block, index, inverse
        # the inverse is not the forward's exact inverse: a fixed point, or an ODE solved backwards
        self.keeps_input = block.is_iterative or isinstance(block, NeuralODE)
        self.params = list(block.parameters())
        self.slots = _parameter_slots(block)
        self.dropouts = [m for m in block.modules()
                         if isinstance(m, nn.modules.dropout._DropoutNd)]
        self.name = f"block {index} ({type(block).__name__})"

    def run(self, v: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        b = self.block
        return b._inverse(v, with_log_det) if self.inverse else b._forward(v, with_log_det)

    def undo(self, v: Tensor) -> Tensor:
        b = self.block
        return (b._forward(v, False) if self.inverse else b._inverse(v, False))[0]

    @property
    def random(self) -> bool:
        """Whether the block draws random numbers now: a dropout layer in training mode (its own
        mode, whatever the wrapper's)."""
        return any(m.training and m.p > 0 for m in self.dropouts)

    @property
    def fused(self) -> bool:
        """Whether one evaluation of the sub-networks inverts the block and rebuilds its graph."""
        return isinstance(self.block, _Coupling) and not self.keeps_input


#: Longest run of consecutive blocks (neither couplings nor keeping their input) recomputed with
#: one autograd call: fewer calls, and the graph of at most this many blocks held at once.
MAX_RUN = 4


def _run_start(steps: list[_Step], k: int) -> int:
    """The first step of the run that the backward rebuilds together, ending at step ``k``."""
    if steps[k].fused or steps[k].keeps_input:
        return k
    lo = k
    while (lo > 0 and k - lo + 1 < MAX_RUN and not steps[lo - 1].fused
           and not steps[lo - 1].keeps_input):
        lo -= 1
    return lo


def _rebuild(steps: list[_Step], lo: int, hi: int, out: Tensor, kept: Tensor | None,
             with_log_det: bool, rng: list, device: torch.device
             ) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor, Tensor | None]:
    """Reconstruct the inputs of steps ``lo..hi`` from the output ``out`` of step ``hi`` (or take
    the kept input, ``lo == hi``) and recompute the steps with their graph.

    Returns the input of step ``lo`` (no graph), the inputs of steps ``lo..hi``, the leaves whose
    gradients sum to the input gradient, and the recomputed output and log-det (with graph)."""
    _replay(rng[hi], device)
    s = steps[hi]
    if s.fused:
        # x_{I1} = y_{I1}: one evaluation of the sub-networks inverts and rebuilds.
        b, p = s.block, s.block.partition
        cond_leaf = out.detach().requires_grad_()
        with torch.enable_grad():
            cond = b.conditioner(cond_leaf)
        with torch.no_grad():
            v = p.combine(out, b.couple(p.active(out), cond, not s.inverse, False)[0])
        leaf = v.detach().requires_grad_()
        with torch.enable_grad():
            z2, ld = b.couple(p.active(leaf), cond, s.inverse, with_log_det)
            recomputed = p.combine(leaf, z2)
        return v, [v], [leaf, cond_leaf], recomputed, ld
    inputs = [out]
    if kept is not None:
        inputs = [kept, out]
    else:
        with torch.no_grad():
            for i in reversed(range(lo, hi + 1)):
                _replay(rng[i], device)
                inputs.insert(0, steps[i].undo(inputs[0]))
    leaf = inputs[0].detach().requires_grad_()
    recomputed, total = leaf, None
    with torch.enable_grad():
        for i in range(lo, hi + 1):
            _replay(rng[i], device)
            recomputed, ld = steps[i].run(recomputed, with_log_det)
            total = ld if total is None else total + ld
    return inputs[0], inputs[:-1], [leaf], recomputed, total


AutocastState = tuple[str, bool, "torch.dtype | None"]


def autocast_state(device: torch.device) -> AutocastState:
    """``(device type, enabled, dtype)`` of the autocast (mixed precision) region in force for
    ``device``, so the backward can recompute each block under the same one."""
    kind = device.type
    try:
        return kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except TypeError:  # torch < 2.4: per-device functions
        if kind == "cuda":
            return kind, torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        if kind == "cpu":
            return kind, torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        return kind, False, None


def autocast(state: AutocastState) -> contextlib.AbstractContextManager:
    """Enter the autocast region described by ``state`` (a no-op when it was off)."""
    kind, enabled, dtype = state
    return torch.autocast(kind, dtype=dtype) if enabled else contextlib.nullcontext()


def device_rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The CPU RNG state and, for a CUDA ``device``, that device's."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_device_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    """Restore a state from :func:`device_rng_state`."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _replay(state: tuple[Tensor, Tensor | None] | None, device: torch.device) -> None:
    if state is not None:
        set_device_rng_state(state, device)


def fork_rng(device: torch.device, enabled: bool = True):
    """Restore the caller's RNG state after the backward replayed the forward's."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                 enabled=enabled)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if b is None:
        return a
    return b if a is None else a + b


class _MemorySavingPass(torch.autograd.Function):
    """``z = F(x)`` (or ``F^-1``) keeping only ``x`` and ``z``; the parameters are inputs so that
    their gradients reach them through autograd."""

    @staticmethod
    def forward(ctx, wrapper: MemorySaving, inverse: bool, with_log_det: bool, x: Tensor,
                *params: Tensor):
        steps = wrapper._steps(inverse)
        random = [s.random for s in steps]
        preserve = wrapper.preserve_rng
        sketching = wrapper._check_due()
        rng, kept, sketches, sketched = [], [], [], []
        total = zeros_log_det(x) if with_log_det else None
        z = x
        # the fallback replays the whole pass from here, with the forward's dropout masks
        ctx.rng_start = device_rng_state(x.device)
        for i, (s, r) in enumerate(zip(steps, random, strict=True)):
            rng.append(device_rng_state(z.device) if preserve or (preserve is None and r) else None)
            # the first block's output on every pass: a first block that rescales (ActNorm
            # centring data of large mean) hides the error of everything above it from the
            # network input's relative error
            sketched.append(not s.keeps_input
                            and (sketching or (i == 1 and wrapper.check_every > 0)))
            if s.keeps_input:
                kept.append(z)
            elif sketched[-1]:
                sketches.append(_sketch(wrapper._sketch_dirs, z))
            z, ld = s.run(z, with_log_det)
            if total is not None:
                total = total + ld
        ctx.wrapper, ctx.inverse, ctx.with_log_det = wrapper, inverse, with_log_det
        ctx.params, ctx.rng, ctx.n_kept, ctx.sketched = params, rng, len(kept), sketched
        # dropout drew masks that the recomputation cannot draw again
        ctx.unreplayed = preserve is False and any(random)
        ctx.autocast = autocast_state(x.device)
        ctx.save_for_backward(x, z, *kept, *sketches)
        return (z, total) if with_log_det else z

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_ld: Tensor | None = None):
        if torch.is_grad_enabled():  # create_graph=True: the gradient would need its own graph
            raise MemorySavingError(
                "memory-saving gradients do not support double backward (create_graph=True); "
                "use the plain model for gradient penalties"
            )
        x, z, *rest = ctx.saved_tensors
        kept, sketches = rest[:ctx.n_kept], rest[ctx.n_kept:]
        # the forward advanced the spectral norms' power iterations: recompute the same maps
        frozen = (frozen_spectral_norm(ctx.wrapper.model) if ctx.wrapper._has_spectral_norm
                  else contextlib.nullcontext())
        with fork_rng(x.device), frozen:
            grad_x, grad_params = ctx.wrapper._backward(ctx, x, z, kept, sketches, grad_z,
                                                        grad_ld)
        return (None, None, None, grad_x, *grad_params)


class MemorySaving(InvertibleBlock):
    """A memory-saving view of an invertible model (see the module docstring); build it with
    :func:`memory_saving`. Its parameters are the model's own tensors.

    Attributes:
        model: the wrapped model.
        fallbacks: how many backward passes were recomputed with ordinary autograd.
        failures: how many backward passes failed the check (whatever the policy did).
        last_check: the :class:`ReconstructionCheck` of the last backward, or ``None``.
    """

    def __init__(self, model: InvertibleBlock, policy: str = "fallback", tol: float | None = None,
                 check_every: int = 10, preserve_rng: bool | None = None) -> None:
        super().__init__()
        require_block(model)
        if policy not in POLICIES:
            raise InputError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
        if tol is not None and not tol > 0:
            raise InputError(f"tol must be a positive number or None, got {tol!r}")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
            raise InputError(f"check_every must be an integer >= 0 (0: never), got {check_every!r}")
        if preserve_rng is not None and not isinstance(preserve_rng, bool):
            raise InputTypeError(f"preserve_rng must be True, False or None, got {preserve_rng!r}")
        self.model = model
        self.policy, self.tol, self.check_every, self.preserve_rng = (
            policy, tol, check_every, preserve_rng)
        leaves = model.flat_blocks()
        self._forward_steps = [_Step(b, i, False) for i, b in enumerate(leaves)]
        self._inverse_steps = [_Step(b, i, True) for i, b in reversed(list(enumerate(leaves)))]
        modules = list(model.modules())
        self._actnorms = [m for m in modules if isinstance(m, ActNorm)]
        self._actnorms_ready = not self._actnorms
        self._has_spectral_norm = any(isinstance(m, (SpectralNormLinear, SpectralNormConv2d))
                                      for m in modules)
        self.fallbacks = 0
        self.failures = 0
        self.passes = 0
        self._sketch_dirs: dict = {}
        self.last_check: ReconstructionCheck | None = None

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, tol={self.tol}, check_every={self.check_every}"

    def counts(self) -> dict[str, int]:
        """``passes``, ``failures`` and ``fallbacks`` so far (``passes`` sets the schedule of
        ``check_every``): what a checkpoint keeps for an exact resumption."""
        return {"passes": self.passes, "failures": self.failures, "fallbacks": self.fallbacks}

    def load_counts(self, counts: dict[str, int]) -> None:
        """Restore :meth:`counts`."""
        self.passes, self.failures, self.fallbacks = (
            int(counts["passes"]), int(counts["failures"]), int(counts["fallbacks"]))

    # -- the InvertibleBlock contract ---------------------------------------------------------

    def _forward(self, x: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self._pass(x, False, with_log_det)

    def _inverse(self, y: Tensor, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        return self._pass(y, True, with_log_det)

    def flat_blocks(self) -> list[InvertibleBlock]:
        return self.model.flat_blocks()

    @property
    def is_iterative(self) -> bool:
        return self.model.is_iterative

    def validate(self) -> None:
        self.model.validate()

    # -- the pass -----------------------------------------------------------------------------

    def _steps(self, inverse: bool) -> list[_Step]:
        return self._inverse_steps if inverse else self._forward_steps

    def _check_due(self) -> bool:
        """Count a memory-saving pass; whether this one checks every block."""
        self.passes += 1
        return self.check_every > 0 and self.passes % self.check_every == 0

    def _initialize_actnorm(self, v: Tensor, inverse: bool) -> None:
        """Run ActNorm's data-dependent initialisation in a plain no-grad forward, once."""
        if self._actnorms_ready or not any(m.training for m in self._actnorms):
            return
        if all(bool(m.initialized) for m in self._actnorms):
            self._actnorms_ready = True
            return
        if inverse:
            raise InputError(
                "ActNorm layers are not initialised: run a forward pass in training mode first "
                "(their initialisation is data-dependent)"
            )
        with torch.no_grad():
            self.model(v)
        self._actnorms_ready = True

    def _pass(self, v: Tensor, inverse: bool, with_log_det: bool) -> tuple[Tensor, Tensor | None]:
        if not isinstance(v, Tensor):
            raise InputTypeError(f"input must be a torch.Tensor, got {type(v).__name__}")
        self._initialize_actnorm(v, inverse)
        params = [p for p in self.model.parameters() if p.requires_grad]
        run = self.model._inverse if inverse else self.model._forward
        needs_graph = torch.is_grad_enabled() and (params or v.requires_grad)
        if not needs_graph or not self._steps(inverse):
            return run(v, with_log_det)
        out = _MemorySavingPass.apply(self, inverse, with_log_det, v, *params)
        return out if with_log_det else (out, None)

    # -- the backward -------------------------------------------------------------------------

    def _backward(self, ctx, x: Tensor, z: Tensor, kept: list[Tensor], sketches: list[Tensor],
                  grad_z: Tensor, grad_ld: Tensor | None
                  ) -> tuple[Tensor | None, list[Tensor | None]]:
        steps, params, with_ld = self._steps(ctx.inverse), ctx.params, ctx.with_log_det
        kept, sketches = list(kept), list(sketches)
        position = {id(p): i for i, p in enumerate(params)}
        grads: list[Tensor | None] = [None] * len(params)
        errors: list[tuple[int | list[int], Tensor]] = []
        sketched: tuple[list[int], list[Tensor], list[Tensor]] = ([], [], [])
        grad, out = grad_z, z.detach()
        k = len(steps) - 1
        while k >= 0:
            lo = _run_start(steps, k)
            block_params = [p for i in range(lo, k + 1) for p in steps[i].params
                            if id(p) in position]
            slots = [slot for i in range(lo, k + 1) for slot in steps[i].slots]
            with autocast(ctx.autocast), detached_parameters(slots, position) as alias:
                v, inputs, leaves, recomputed, ld = _rebuild(
                    steps, lo, k, out, kept.pop() if steps[k].keeps_input else None, with_ld,
                    ctx.rng, x.device)
            if steps[k].keeps_input and k + 1 < len(steps):
                # the kept input recomputes the true output: the reconstruction that reached it
                # (by the block above) is measured exactly
                errors.append((steps[k + 1].index, relative_error(out, recomputed.detach())))
            elif not steps[k].keeps_input:
                for i in reversed(range(lo, k + 1)):
                    if ctx.sketched[i]:
                        sketched[0].append(steps[i].index)
                        sketched[1].append(_project(self._sketch_dirs, inputs[i - lo]))
                        sketched[2].append(sketches.pop())
            outputs, grad_outputs = [recomputed], [grad]
            if with_ld and ld.requires_grad:
                outputs.append(ld)
                grad_outputs.append(grad_ld)
            found = torch.autograd.grad(outputs, leaves + [alias[id(p)] for p in block_params],
                                        grad_outputs, allow_unused=True)
            grad = None
            for g in found[:len(leaves)]:
                grad = _add(grad, g)
            if grad is None:
                grad = torch.zeros_like(v)
            for p, g in zip(block_params, found[len(leaves):]):
                grads[position[id(p)]] = _add(grads[position[id(p)]], g)
            out, k = v, lo - 1
        errors.append((-1, relative_error(out, x)))
        _, amp, amp_dtype = ctx.autocast
        if sketched[0]:
            errors.insert(-1, (sketched[0], _sketch_errors(sketched[1], sketched[2])))
        check = self._judge(ctx.inverse, errors, amp_dtype if amp else x.dtype, ctx.unreplayed)
        if check.passed:
            return grad, grads
        self.failures += 1
        if self.policy == "fallback":
            self.fallbacks += 1
            self.last_check = ReconstructionCheck(**{**check.__dict__, "fell_back": True})
            return _autograd_backward(steps, ctx, x, grad_z, grad_ld)
        if ctx.unreplayed:
            message = (
                f"memory-saving backward of the {check.direction} pass: preserve_rng=False but "
                "dropout layers are in training mode, so the recomputation drew other dropout "
                "masks than the forward and its gradient is not the true one; use "
                "preserve_rng=None (the default) or policy='fallback'"
            )
        else:
            message = self._diagnose(steps, ctx, x, z, ctx.saved_tensors[2:2 + ctx.n_kept],
                                     check.tol)
        if self.policy == "raise":
            raise MemorySavingError(message)
        warnings.warn(message, MemorySavingWarning, stacklevel=2)
        return grad, grads

    def _judge(self, inverse: bool, errors: list[tuple[int | list[int], Tensor]],
               dtype: torch.dtype, unreplayed: bool = False) -> ReconstructionCheck:
        """Bring the errors (block index and 0-dim error, or indices and their errors; the
        network input's last) to the host, the one sync of a backward, and apply ``tol``; a
        pass whose dropout masks were not kept (``unreplayed``) fails whatever it measured."""
        tol = self.tol if self.tol is not None else _default_tol(dtype)
        values = torch.cat([e.reshape(-1).to(torch.float64) for _, e in errors]).tolist()
        indices = [j for i, _ in errors[:-1] for j in (i if isinstance(i, list) else [i])]
        blocks = dict(zip(indices, values[:-1], strict=True))
        passed = not unreplayed and all(v <= tol for v in values)  # False for NaN
        check = ReconstructionCheck("inverse" if inverse else "forward", values[-1], blocks, tol,
                                    passed)
        self.last_check = check
        return check

    def _diagnose(self, steps: list[_Step], ctx, x: Tensor, z: Tensor,
                  kept_inputs: Sequence[Tensor], tol: float) -> str:
        """Recompute the true activations and name the first block, in backward order, whose
        reconstructed input is wrong (memory grows with depth here, on the failure path only)."""
        direction = "inverse" if ctx.inverse else "forward"
        kept = list(kept_inputs)
        with torch.no_grad(), autocast(ctx.autocast):
            true = [x]
            for k, s in enumerate(steps):
                _replay(ctx.rng[k], x.device)
                true.append(s.run(true[-1], False)[0])
            rec, above = z, 0.0
            for k in reversed(range(len(steps))):
                s = steps[k]
                _replay(ctx.rng[k], x.device)
                rec = kept.pop() if s.keeps_input else s.undo(rec)
                err = float(relative_error(rec, true[k]))
                if not err <= tol:
                    n_nan, n_inf = int(torch.isnan(rec).sum()), int(torch.isinf(rec).sum())
                    return (
                        f"memory-saving backward of the {direction} pass: {s.name} reconstructed "
                        f"its input with relative error {err:.3g} > tol {tol:.3g} ({n_nan} NaN, "
                        f"{n_inf} Inf; its output's error was {above:.3g}); use "
                        "policy='fallback' to recompute such steps with stored activations"
                    )
                above = err
        return (f"memory-saving backward of the {direction} pass failed its check "
                f"{self.last_check} but no single block's reconstructed input exceeds tol "
                f"{tol:.3g} against the recomputed activations")


def _autograd_backward(steps: list[_Step], ctx, x: Tensor, grad_z: Tensor,
                       grad_ld: Tensor | None) -> tuple[Tensor | None, list[Tensor | None]]:
    """The true gradient: the pass redone with ordinary autograd from the stored input."""
    leaf = x.detach().requires_grad_()
    position = {id(p): i for i, p in enumerate(ctx.params)}
    slots = [slot for s in steps for slot in s.slots]
    with torch.enable_grad(), autocast(ctx.autocast), \
            detached_parameters(slots, position) as alias:
        z, total = leaf, zeros_log_det(leaf) if ctx.with_log_det else None
        set_device_rng_state(ctx.rng_start, x.device)
        for s in steps:
            z, ld = s.run(z, ctx.with_log_det)
            if total is not None:
                total = total + ld
        outputs, grad_outputs = [z], [grad_z]
        if total is not None and total.requires_grad:
            outputs.append(total)
            grad_outputs.append(grad_ld)
        found = torch.autograd.grad(outputs, [leaf, *(alias.get(id(p), p) for p in ctx.params)],
                                    grad_outputs, allow_unused=True)
    return found[0], list(found[1:])


def memory_saving(model: InvertibleBlock, policy: str = "fallback", tol: float | None = None,
                  check_every: int = 10, preserve_rng: bool | None = None) -> MemorySaving:
    """Wrap ``model`` for memory-saving gradients with a self-check (see the module docstring).

    Args:
        model: an :class:`~lipbound.blocks.InvertibleBlock`, usually an
            :class:`~lipbound.blocks.InvertibleSequential`; its leaf blocks are walked.
        policy: ``"fallback"`` (default), ``"raise"`` or ``"warn"``: what a failed check does.
        tol: largest accepted relative reconstruction error; default ``sqrt(eps)`` of the
            input's dtype (about 3.5e-4 in float32, 1.5e-8 in float64), or of the autocast dtype
            when the pass ran under ``torch.autocast`` (0.088 in bfloat16, 0.031 in float16).
        check_every: sketch and check every block's reconstructed input on every
            ``check_every``-th pass (default 10; 1: always; 0: never); the network input, the
            output of every block that keeps its input, and (unless 0) the first block's output
            are checked on every backward.
        preserve_rng: save and restore the RNG state per block; ``None`` (default): for the
            blocks whose dropout layers are in training mode (their own mode); ``False``: never,
            and then a pass with dropout in training mode fails the check (see above).

    Returns:
        a :class:`MemorySaving` module with the model's ``forward``, ``inverse``,
        ``forward_and_log_det`` and ``inverse_and_log_det``, sharing its parameters.
    """
    return MemorySaving(model, policy, tol, check_every, preserve_rng)
