"""Memory-saving gradients against ordinary autograd, the self-check and its policies, memcnn."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from ddp_helpers import LOSSES, ddp_data, ddp_model, ddp_worker
from torch import nn

from lipbound.blocks import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelPartition,
    DiagonalScaling,
    IdentityScale,
    Invertible1x1Conv,
    InvertibleResidual,
    InvertibleSequential,
    NeuralODE,
    ODEFunc,
    Permutation,
    Squeeze,
    checkerboard,
    conv_subnet,
    coupling_mlp,
    glow_like,
    halves,
    mlp,
    randomize_parameters,
)
from lipbound.blocks.residual import residual_mlp
from lipbound.errors import InputError, InputTypeError
from lipbound.training import (
    MemorySavingError,
    MemorySavingWarning,
    fd_regularizer,
    gradient_agreement,
    memory_saving,
    nf_loss,
)

RTOL = 1e-10


def _noisy(model, std=0.1, seed=1):
    return randomize_parameters(model, std, torch.Generator().manual_seed(seed))


def _images(shape, n=3, seed=2):
    return torch.randn((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed))


def _weights(like, seed):
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(seed))


def _loss(net, x, what):
    """A loss that reaches every output the memory-saving pass differentiates."""
    z, ld = net.forward_and_log_det(x)
    if what == "map":
        return (net(x) * _weights(z, 3)).sum()
    if what == "log_det":
        return (z * _weights(z, 3)).sum() + (ld * _weights(ld, 4)).sum()
    if what == "inverse":
        y = z + 0.01 * _weights(z, 5)
        x_rec, ld_inv = net.inverse_and_log_det(y)
        return (x_rec * _weights(x_rec, 6)).sum() + (ld_inv * _weights(ld_inv, 7)).sum()
    if what == "fd":
        fd = fd_regularizer(net, x, coeff=0.5, generator=torch.Generator().manual_seed(8))
        return fd.loss + (fd.z * _weights(fd.z, 9)).sum()
    raise AssertionError(what)


def _grads(net, params, x, what):
    x = x.clone().requires_grad_()
    return torch.autograd.grad(_loss(net, x, what), [x, *params], allow_unused=True)


def assert_same_gradients(model, x, what, rtol=RTOL, **kwargs):
    twin = copy.deepcopy(model)  # same state (spectral norms advance in training mode)
    ref = _grads(twin, list(twin.parameters()), x, what)
    wrapped = memory_saving(model, policy="raise", **kwargs)
    params = list(model.parameters())
    got = _grads(wrapped, params, x, what)
    assert any(g is not None for g in ref[1:]) or not params
    for i, (a, b) in enumerate(zip(ref, got)):
        if a is None:
            assert b is None or float(b.abs().max()) == 0, i
            continue
        err = float((a - b).norm())
        assert err <= rtol * float(a.norm()) + 1e-300, (i, err, float(a.norm()))
    assert wrapped.fallbacks == 0 and wrapped.last_check.passed
    return wrapped


def _single(block):
    return InvertibleSequential(block)


def _blocks():
    """(name, model builder, per-sample input shape) for every analytic block type (built in the
    test, under its float64 default)."""
    def gen():
        return torch.Generator().manual_seed(0)

    return [
        ("additive_mlp", lambda: _single(AdditiveCoupling(halves(4), mlp(2, 2, 8, 1, "tanh"))),
         (4,)),
        ("additive_conv", lambda: _single(AdditiveCoupling(halves(4), conv_subnet(2, 2, 4))),
         (4, 4, 4)),
        ("additive_checkerboard", lambda: _single(AdditiveCoupling(
            checkerboard((2, 4, 4)), conv_subnet(2, 2, 4))), (2, 4, 4)),
        ("affine_sigmoid", lambda: _single(AffineCoupling(
            halves(4), mlp(2, 2, 8, 1, "tanh"), mlp(2, 2, 8, 1, "tanh"))), (4,)),
        ("affine_modified", lambda: _single(AffineCoupling(
            halves(4), mlp(2, 2, 8, 1), mlp(2, 2, 8, 1), "modified")), (4,)),
        ("affine_exp_checkerboard", lambda: _single(AffineCoupling(
            checkerboard((4,)), mlp(4, 4, 8, 1, "tanh"), mlp(4, 4, 8, 1, "tanh"), "exp")), (4,)),
        ("affine_conv", lambda: _single(AffineCoupling(
            halves(4), conv_subnet(2, 2, 4), conv_subnet(2, 2, 4))), (4, 4, 4)),
        ("actnorm", lambda: _single(ActNorm(3)), (3, 4, 4)),
        ("diagonal", lambda: _single(DiagonalScaling(torch.rand(4) + 0.5)), (4,)),
        ("conv1x1", lambda: _single(Invertible1x1Conv(4, generator=gen())), (4, 3, 3)),
        ("conv1x1_lu", lambda: _single(Invertible1x1Conv(4, lu=True, generator=gen())), (4,)),
        ("permutation", lambda: _single(Permutation(5, "random", seed=3)), (5,)),
        ("squeeze", lambda: InvertibleSequential(Squeeze(2), ActNorm(8)), (2, 4, 4)),
        ("glow_like", lambda: glow_like((2, 8, 8), 2, 2, 8, "affine", "lu"), (2, 8, 8)),
        ("glow_like_additive", lambda: glow_like((2, 4, 4), 1, 3, 8, "additive", "1x1conv"),
         (2, 4, 4)),
        ("coupling_mlp", lambda: coupling_mlp(4, 6, 16, "affine", actnorm=True), (4,)),
    ]


@pytest.mark.parametrize("what", ["map", "log_det", "inverse", "fd"])
@pytest.mark.parametrize("case", _blocks(), ids=lambda c: c[0])
def test_gradients_equal_autograd(case, what):
    _, build, shape = case
    model = _noisy(build()).train()
    assert_same_gradients(model, _images(shape), what)


@pytest.mark.parametrize("what", ["map", "log_det", "inverse"])
def test_iterative_blocks_keep_their_input(what):
    model = _noisy(InvertibleSequential(
        ActNorm(2), InvertibleResidual(residual_mlp(2, 8, 1, 0.5), tol=1e-14),
        AffineCoupling(halves(2), mlp(1, 1, 8, 1, "tanh"), mlp(1, 1, 8, 1, "tanh")),
        NeuralODE(ODEFunc(2, 8, 1), T=0.5, steps=4), AdditiveCoupling(halves(2, True), 0.3),
    ), 0.05)
    wrapped = assert_same_gradients(model, _images((2,), 5), what, check_every=0)
    # the blocks that keep their input (1 and 3) are checkpoints: the reconstruction that reached
    # them, by the block after them in the pass, is measured exactly
    direction = wrapped.last_check.direction
    assert set(wrapped.last_check.block_errors) == ({0, 2} if direction == "inverse" else {2, 4})


def test_saved_activations_do_not_grow_with_depth():
    """The wrapper keeps x and z; the check's sketches add 3 numbers per sample and block
    (every block on a checked pass, the first block's output on the others)."""
    def saved_bytes(depth, wrap, check_every=1):
        model = _noisy(coupling_mlp(4, depth, 16, "affine", actnorm=True))
        net = memory_saving(model, check_every=check_every) if wrap else model
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            z, ld = net.forward_and_log_det(_images((4,), 16))
        (z.sum() + ld.sum()).backward()
        return sum(sizes)

    x_and_z, sketch = 2 * 16 * 4 * 8, 16 * 3 * 8
    assert saved_bytes(2, True, 0) == saved_bytes(16, True, 0) == x_and_z
    assert saved_bytes(2, True, 5) == saved_bytes(16, True, 5) == x_and_z + sketch
    for depth in (2, 16):
        blocks = len(coupling_mlp(4, depth, 16, "affine", actnorm=True).flat_blocks())
        assert saved_bytes(depth, True) == x_and_z + blocks * sketch
    assert saved_bytes(16, False) > 4 * saved_bytes(2, False)


def test_gradients_arrive_through_autograd_hooks_and_optimizers():
    model = _noisy(coupling_mlp(4, 4, 8, "affine"))
    net = memory_saving(model)
    assert list(net.parameters()) == list(model.parameters())
    seen = []
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: seen.append(p))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    z, ld = net.forward_and_log_det(_images((4,), 8))
    (0.5 * (z**2).sum() - ld.sum()).backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    assert len(seen) == len(before)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("tol", [None, 1e-300], ids=["memory_saving", "fallback"])
def test_parameter_hooks_fire_once(tol):
    """A hook on a parameter sees its whole gradient once, as with plain autograd (not each
    block's part again, which doubled ``lambda g: 2 * g`` into 4 g)."""
    model = _noisy(coupling_mlp(4, 4, 8, "affine", actnorm=True))
    x = _images((4,), 8)
    model(x)
    calls = []
    for p in model.parameters():
        p.register_hook(lambda g: (calls.append(1), 2 * g)[1])

    def run(net):
        calls.clear()
        model.zero_grad()
        (net(x) * _weights(x, 3)).sum().backward()
        return [p.grad.clone() for p in model.parameters()], len(calls)

    ref, n_ref = run(model)
    net = memory_saving(model, tol=tol)
    got, n_got = run(net)
    assert net.fallbacks == (tol is not None)
    assert n_got == n_ref == len(ref)
    for a, b in zip(ref, got):
        assert float((a - b).norm()) <= RTOL * float(a.norm())


def test_double_backward_raises():
    """A gradient penalty needs the gradient's own graph (create_graph=True), which the
    memory-saving backward does not build: it raises instead of returning part of it."""
    model = _noisy(coupling_mlp(4, 4, 8, "affine"))
    x = _images((4,), 8).requires_grad_()
    loss = (memory_saving(model)(x) * _weights(x, 3)).sum()
    with pytest.raises(MemorySavingError, match=r"do not support double backward "
                                                r"\(create_graph=True\); use the plain model"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_distributed_data_parallel_receives_the_gradients(tmp_path):
    import torch.distributed as dist

    model = _noisy(coupling_mlp(4, 4, 8, "affine"))
    x = _images((4,), 8)
    twin = copy.deepcopy(model)
    ref = _grads(twin, list(twin.parameters()), x, "map")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(memory_saving(model))
        (ddp(x) * _weights(x, 3)).sum().backward()
        agree = gradient_agreement(ddp, lambda net, b: nf_loss(net, b).loss, [x])
        assert agree.angles_deg[0] < 1e-6
    finally:
        dist.destroy_process_group()
    for a, p in zip(ref[1:], model.parameters()):
        assert float((a - p.grad).norm()) <= RTOL * float(a.norm())


def test_distributed_data_parallel_averages_nf_and_fd_gradients(tmp_path):
    """Two gloo processes on the CPU: nf_loss and fd_regularizer (which need the log-determinant
    and the inverse) run through DDP's call, so both ranks get the average of their gradients."""
    mp.spawn(ddp_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    flow = ddp_model()
    flow(ddp_data(0))
    params = list(flow.parameters())
    for name, loss in LOSSES.items():
        per_rank = [torch.cat([g.flatten() for g in torch.autograd.grad(loss(flow, ddp_data(r)),
                                                                        params)])
                    for r in range(2)]
        mean = (per_rank[0] + per_rank[1]) / 2
        assert float((per_rank[0] - per_rank[1]).norm()) > 0.1 * float(mean.norm())
        for r in range(2):
            ddp_grad = torch.cat([g.flatten() for g in got[r][name]])
            assert float((ddp_grad - mean).norm()) <= RTOL * float(mean.norm()), (name, r)


def test_actnorm_initialises_in_the_forward_before_memory_saving():
    def fresh():
        torch.manual_seed(5)
        return glow_like((2, 4, 4), 1, 2, 4, "affine", "1x1conv").train()

    x = _images((2, 4, 4), 6) * 3 + 1
    plain, wrapped_model = fresh(), fresh()
    plain(x)  # data-dependent initialisation
    net = memory_saving(wrapped_model, policy="raise")
    params = list(wrapped_model.parameters())
    got = _grads(net, params, x, "log_det")
    for a, b in zip(plain.state_dict().values(), wrapped_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ref = _grads(plain, list(plain.parameters()), x, "log_det")
    for a, b in zip(ref, got):
        assert float((a - b).norm()) <= RTOL * float(a.norm())
    fresh_net = memory_saving(fresh())
    with pytest.raises(InputError, match="ActNorm layers are not initialised"):
        fresh_net.inverse(x.requires_grad_())


def _dropout_model():
    def net():
        return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 2))
    return InvertibleSequential(*[AffineCoupling(halves(4, flip=i % 2 == 1), net(), net())
                                  for i in range(4)]).train()


def test_dropout_masks_are_replayed():
    model = _noisy(_dropout_model())
    params, x = list(model.parameters()), _images((4,), 8)
    torch.manual_seed(11)
    ref = _grads(model, params, x, "log_det")
    after_ref = torch.rand(3)
    net = memory_saving(model, policy="raise")
    torch.manual_seed(11)
    got = _grads(net, params, x, "log_det")
    after_got = torch.rand(3)
    for a, b in zip(ref, got):
        assert float((a - b).norm()) <= RTOL * float(a.norm())
    torch.testing.assert_close(after_ref, after_got)  # the caller's RNG stream is unchanged
    # the dropout layers' own mode decides, not the wrapper's
    net.eval()
    model.train()
    torch.manual_seed(11)
    got = _grads(net, params, x, "log_det")
    assert net.fallbacks == 0
    for a, b in zip(ref, got):
        assert float((a - b).norm()) <= RTOL * float(a.norm())


def test_dropout_without_replay_falls_back_to_the_forwards_masks():
    """With ``preserve_rng=False`` the recomputation draws other masks: the check fails, and the
    fallback replays the forward's masks, giving autograd's gradient of the same forward."""
    model = _noisy(_dropout_model())
    params, x = list(model.parameters()), _images((4,), 8)
    torch.manual_seed(11)
    ref = _grads(model, params, x, "log_det")
    off = memory_saving(model, preserve_rng=False)
    torch.manual_seed(11)
    got = _grads(off, params, x, "log_det")
    assert off.fallbacks == 1 and not off.last_check.passed
    for a, b in zip(ref, got):
        assert float((a - b).norm()) <= RTOL * float(a.norm())
    with pytest.raises(MemorySavingError, match="preserve_rng=False but dropout layers are in "
                                                "training mode"):
        _grads(memory_saving(model, "raise", preserve_rng=False), params, x, "log_det")
    model.eval()  # no random numbers drawn: nothing to replay
    quiet = memory_saving(model, "raise", preserve_rng=False)
    assert_same_gradients(model, x, "log_det", preserve_rng=False)
    _grads(quiet, params, x, "map")
    assert quiet.fallbacks == 0


class _Pick(nn.Module):
    """Every other output of a shared memcnn sub-network (its adapter's scale or shift)."""

    def __init__(self, net: nn.Module, start: int) -> None:
        super().__init__()
        self.net, self.start = net, start

    def forward(self, x):
        return self.net(x)[:, self.start::2]


def _memcnn_case(seed=0, d=8, n_blocks=8, batch=64):
    """memcnn's AffineCoupling with AffineAdapterSigmoid (8 blocks, d = 8, inputs x100), and the
    same map as lipbound couplings sharing its sub-networks: each memcnn block is
    ``y1 = x1 * sigmoid(Fm(x2)_odd + 2) + Fm(x2)_even``, then the same for ``x2`` from ``y1``."""
    memcnn = pytest.importorskip("memcnn")
    torch.manual_seed(seed)
    couplings = [memcnn.AffineCoupling(nn.Sequential(nn.Linear(d // 2, 32), nn.ReLU(),
                                                     nn.Linear(32, d)),
                                       adapter=memcnn.AffineAdapterSigmoid)
                 for _ in range(n_blocks)]
    blocks = []
    for c in couplings:
        for net, flip in ((c.Fm.f, True), (c.Gm.f, False)):
            blocks.append(AffineCoupling(halves(d, flip=flip), _Pick(net, 0), _Pick(net, 1)))
    x = 100 * torch.randn(batch, d, generator=torch.Generator().manual_seed(seed + 1))
    return couplings, InvertibleSequential(*blocks), x


def _nan_fraction(tensors):
    return sum(int(torch.isnan(t).sum()) for t in tensors) / sum(t.numel() for t in tensors)


def _square_loss_grads(net, params, x):
    x = x.clone().requires_grad_()
    return torch.autograd.grad((net(x) ** 2).sum(), [x, *params])


def test_memcnn_affine_sigmoid_case_falls_back_to_true_gradients():
    couplings, model, x = _memcnn_case()
    params = list(model.parameters())
    ref = _square_loss_grads(model, params, x)
    assert _nan_fraction(ref) == 0
    net = memory_saving(model)
    got = _square_loss_grads(net, params, x)
    assert net.fallbacks == 1 and not net.last_check.passed and net.last_check.fell_back
    for a, b in zip(ref, got):
        assert float((a - b).norm()) <= RTOL * float(a.norm())
    # the raw memory-saving gradient is what the check prevented
    with pytest.warns(MemorySavingWarning, match=r"block \d+ \(AffineCoupling\)"):
        raw = _square_loss_grads(memory_saving(model, policy="warn"), params, x)
    assert max(float((a - b).norm() / a.norm()) if torch.isfinite(b).all() else 1.0
               for a, b in zip(ref, raw)) > 1e-3


def test_memcnn_affine_sigmoid_case_raises_naming_the_block():
    """The block named is the first, walking back from the output, whose reconstructed input
    (by the blocks' own inverses from the true output) is off by more than tol; found here
    independently of the wrapper: block 12, with block 13 at ~1e-12."""
    _, model, x = _memcnn_case()
    blocks = model.flat_blocks()
    with torch.no_grad():
        true = [x]
        for b in blocks:
            true.append(b(true[-1]))
        rec, errors = true[-1], {}
        for k in reversed(range(len(blocks))):
            rec = blocks[k].inverse(rec)
            errors[k] = float((rec - true[k]).norm(dim=1).div(true[k].norm(dim=1)).max())
    tol = torch.finfo(torch.float64).eps ** 0.5
    first = max(k for k, e in errors.items() if not e <= tol)
    assert first == 12 and errors[13] < 1e-9
    net = memory_saving(model, policy="raise")
    with pytest.raises(MemorySavingError, match=rf"block {first} \(AffineCoupling\) reconstructed "
                                                r"its input with relative error"):
        _square_loss_grads(net, list(model.parameters()), x)


def _backward_grads(net, params, x):
    """Gradients through ``.backward()`` (memcnn's wrapper refuses ``torch.autograd.grad``)."""
    x = x.clone().requires_grad_()
    for p in params:
        p.grad = None
    (net(x) ** 2).sum().backward()
    return [x.grad] + [p.grad for p in params]


def test_memcnn_itself_returns_nan_gradients_silently():
    memcnn = pytest.importorskip("memcnn")
    couplings, model, x = _memcnn_case()
    wrapped = nn.Sequential(*[memcnn.InvertibleModuleWrapper(c, keep_input=False,
                                                             keep_input_inverse=False)
                              for c in couplings])
    plain = nn.Sequential(*couplings)
    params = list(plain.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        memsave = _backward_grads(wrapped, params, x)
    assert not [w for w in caught if "nan" in str(w.message).lower()]
    true = _backward_grads(plain, params, x)
    assert _nan_fraction(true) == 0
    # most parameter and input gradients come back NaN, with no error
    assert _nan_fraction(memsave[1:]) > 0.3 and _nan_fraction(memsave[:1]) > 0.3
    # the lipbound model is the same map: same true gradients
    ref = _square_loss_grads(model, list(model.parameters()), x)
    torch.testing.assert_close(ref[0], true[0], rtol=1e-12, atol=0)


def test_gradient_agreement_marks_nan_and_flags_failures():
    _, model, x = _memcnn_case()
    batches = [x / 100, x]
    out = gradient_agreement(model, lambda net, b: (net(b) ** 2).sum(), batches)
    assert len(out.angles_deg) == len(out.rel_norm_diffs) == 2
    assert out.angles_deg[0] < 1e-6 and out.rel_norm_diffs[0] < 1e-10
    assert out.check_failed == [False, True]
    assert out.memsave_nonfinite[1] or out.angles_deg[1] > 1
    assert out.summary()["batches"] == 2 and out.summary()["check_failures"] == 1
    good = _noisy(coupling_mlp(4, 4, 8))
    agree = gradient_agreement(good, lambda net, b: nf_loss(net, b).loss, [_images((4,), 8)])
    assert agree.angles_deg[0] < 1e-6 and not agree.check_failed[0]


def test_sketch_catches_a_block_whose_error_the_network_input_hides():
    """Block 1 (exploding inverse, g = 1e-6) loses x_2 = 1e-10 entirely; block 0 then shrinks
    that error relative to the input, which the network-input check alone would pass."""
    def model():
        return InvertibleSequential(
            DiagonalScaling(torch.tensor([1e-8, 1.0])),
            AffineCoupling(ChannelPartition([0], [1], 2), 1.0, 1e-6, IdentityScale()))

    x = torch.tensor([[1.0, 1e-10], [2.0, -3e-10]])
    ref_model = model()
    ref = _square_loss_grads(ref_model, list(ref_model.parameters()), x)
    results = {}
    for check_every in (0, 1):
        m = model()
        net = memory_saving(m, check_every=check_every)
        results[check_every] = (net, _square_loss_grads(net, list(m.parameters()), x))
    blind, blind_grads = results[0]
    assert blind.last_check.passed and blind.last_check.input_error < 1e-9
    # the gradient of D_22, which multiplies the lost x_2, is silently wrong
    assert abs(float(blind_grads[1][1] / ref[1][1]) - 1) > 0.1
    checked, grads = results[1]
    assert checked.fallbacks == 1 and checked.last_check.block_errors[1] > 1e-3
    for a, b in zip(ref, grads):
        assert float((a - b).norm()) <= RTOL * float(a.norm())
    with pytest.raises(MemorySavingError, match=r"block 1 \(AffineCoupling\)"):
        _square_loss_grads(memory_saving(model(), "raise", check_every=1), [], x)


def _actnorm_centring_case():
    """ActNorm first, centring data of mean 1e6 and scaling by 30, then 8 affine couplings: the
    couplings' reconstruction error is ~1e-3 relative to their inputs but ~1e-8 relative to the
    network input, which the network-input check alone passes."""
    torch.manual_seed(0)
    d = 8
    blocks = [ActNorm(d)] + [AffineCoupling(halves(d, flip=i % 2 == 1), mlp(4, 4, 32, 1),
                                            mlp(4, 4, 32, 1)) for i in range(8)]
    model = InvertibleSequential(*blocks).train()
    x = 1e6 + torch.randn(64, d, generator=torch.Generator().manual_seed(1))
    model(x)
    with torch.no_grad():
        model[0].log_scale += math.log(30)
    return model, x


@pytest.mark.parametrize("check_every", [1, 10])
def test_first_block_output_is_checked_on_every_pass(check_every):
    model, x = _actnorm_centring_case()
    params = list(model.parameters())
    ref = _square_loss_grads(model, params, x)
    blind = memory_saving(model, check_every=0)
    raw = _square_loss_grads(blind, params, x)
    assert blind.last_check.passed and blind.last_check.input_error < 1e-7
    assert max(float((a - b).norm() / a.norm()) for a, b in zip(ref, raw)) > 1e-5
    net = memory_saving(model, check_every=check_every)  # 10: the first pass is not a checked one
    got = _square_loss_grads(net, params, x)
    assert net.fallbacks == 1 and net.last_check.block_errors[1] > net.last_check.tol
    for a, b in zip(ref, got):
        assert float((a - b).norm()) <= RTOL * float(a.norm())


def test_tolerance_and_schedule():
    model = _noisy(coupling_mlp(4, 4, 8, "affine"))
    net = memory_saving(model, check_every=2)
    x = _images((4,), 4).requires_grad_()
    for k in range(1, 4):
        net(x).sum().backward()
        checked = set(net.last_check.block_errors)
        assert 1 in checked and (len(checked) > 1) == (k % 2 == 0)  # the first block's output
        assert net.last_check.input_error < 1e-14
    tight = memory_saving(model, tol=1e-300)  # every rounding error fails
    tight(x).sum().backward()
    assert tight.fallbacks == 1 and tight.failures == 1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"policy": "ignore"}, InputError, "policy must be one of"),
    ({"tol": 0.0}, InputError, "tol must be a positive number"),
    ({"check_every": -1}, InputError, "check_every must be an integer >= 0"),
    ({"preserve_rng": "yes"}, InputTypeError, "preserve_rng must be"),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        memory_saving(coupling_mlp(4, 2, 8), **kwargs)


def test_bad_model():
    with pytest.raises(InputTypeError, match="model must be an InvertibleBlock"):
        memory_saving(nn.Linear(2, 2))


def test_autocast_pass_recomputes_under_the_same_autocast_region():
    """bfloat16 autocast on the CPU: the backward recomputes in the forward's mixed precision
    (without it, a conv gets bfloat16 inputs and float32 weights and fails); the gradients agree
    with autograd's under the same autocast to bfloat16 accuracy, and the check passes at the
    bfloat16 default tolerance."""
    torch.manual_seed(0)
    model = glow_like((3, 8, 8), levels=1, steps=3, hidden=16, coupling="affine")
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model(x)

    def grads(net):
        for p in net.parameters():
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z, log_det = net.forward_and_log_det(x)
            loss = (z.float() ** 2).sum() - log_det.float().sum()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    exact = grads(model)
    net = memory_saving(model, check_every=1)
    saved = grads(net)
    assert net.fallbacks == 0
    assert net.last_check.passed
    assert net.last_check.tol == pytest.approx(torch.finfo(torch.bfloat16).eps ** 0.5)
    assert torch.isfinite(saved).all()
    assert float((saved - exact).norm() / exact.norm()) < 0.05
