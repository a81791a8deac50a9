"""The full-size presets: their settings are the paper's tables, their parameter counts equal the
counts of the architectures the paper describes (formulas written here from the paper, not from
the code), one training step of each runs on the CPU at a reduced size through the same code, and
bad data settings give messages that name the key."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from dataset_files import write_celeba, write_cifar10

from lipbound.errors import InputError
from lipbound.training.presets import CPU_PRESETS, FULL_SIZE, PRESETS, load_config
from lipbound.training.tasks import TASKS, augment_batch
from lipbound.training.trainers import TrainConfig, Trainer, train


def conv(c_in: int, c_out: int, k: int) -> int:
    """Weights and biases of a k x k convolution."""
    return k * k * c_in * c_out + c_out


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def glow_step(c: int, hidden: int, coupling: str, mixing: str) -> int:
    """One Glow-like step on ``c`` channels: ActNorm (scale and bias per channel), the channel
    mixing (1x1 convolution: a c x c matrix; a permutation: nothing) and the coupling, whose
    networks are 3x3 -> 1x1 -> 3x3 convolutions from half the channels to ``hidden`` and back
    (appendix G); eq. 3 has one network (t), eq. 4 two (s and t)."""
    net = conv(c // 2, hidden, 3) + conv(hidden, hidden, 1) + conv(hidden, c // 2, 3)
    n_nets = 1 if coupling == "additive" else 2
    return 2 * c + (c * c if mixing == "1x1conv" else 0) + n_nets * net


def multiscale(in_channels: int, levels: int, step) -> int:
    """A squeeze (channels x 4) before each level, no factoring out; ``step(c)`` per level."""
    return sum(step(in_channels * 4 ** (level + 1)) for level in range(levels))


def expected_parameters(name: str) -> int:
    if name.startswith("cifar10-classifier-"):
        # appendix G: 3 levels x 16 blocks, 128 channels, ActNorm (Figure 14); head BatchNorm1d
        # (scale, shift) -> ReLU -> Linear from the 3 x 32 x 32 features to 10 logits
        coupling, mixing = name.split("-")[2:]
        body = multiscale(3, 3, lambda c: 16 * glow_step(c, 128, coupling, mixing))
        return body + 2 * 3072 + linear(3072, 10)
    if name == "cifar10-glow":  # Table 6: 3 levels x 32 blocks, 512 channels, reverse permutation
        return multiscale(3, 3, lambda c: 32 * glow_step(c, 512, "affine", "reverse"))
    if name in ("celeba64-affine", "celeba64-modified-affine"):  # Table 7, 64x64 input
        return multiscale(3, 4, lambda c: 16 * glow_step(c, 512, "affine", "none"))
    if name == "celeba64-resflow":
        # per block ActNorm and x + g(x), g = 3x3 -> 1x1 -> 3x3 convolutions of width 512 with
        # two LipSwish activations (one learned beta each, Chen et al. 2019); the FC end: 4
        # blocks (ActNorm, MLP 12288 -> 128 -> 128 -> 12288 with two LipSwish) at 768 x 4 x 4
        def block(c):
            return 2 * c + conv(c, 512, 3) + conv(512, 512, 1) + conv(512, c, 3) + 2
        fc = 2 * 768 + linear(12288, 128) + linear(128, 128) + linear(128, 12288) + 2
        return multiscale(3, 4, lambda c: 16 * block(c)) + 4 * fc
    if name.startswith("checkerboard-"):
        # Table 4: 100 blocks, MLPs 128-128-128-128, no ActNorm; couplings on R^2 have networks
        # from 1 to 1 coordinate, residual branches from 2 to 2 with 4 LipSwish activations
        def mlp(d):
            return linear(d, 128) + 3 * linear(128, 128) + linear(128, d)
        return 100 * (mlp(2) + 4 if name == "checkerboard-resflow" else 2 * mlp(1))
    raise KeyError(name)


def test_the_full_size_presets_are_the_papers():
    assert set(FULL_SIZE) == {
        *(f"cifar10-classifier-{c}-{m}" for c in ("additive", "affine")
          for m in ("1x1conv", "shuffle")),
        "cifar10-glow", *(f"{d}-{v}" for d in ("celeba64", "checkerboard")
                          for v in ("affine", "modified-affine", "resflow"))}
    assert set(CPU_PRESETS) | set(FULL_SIZE) == set(PRESETS)
    table8 = {"batch_size": 128, "lr": 1e-4, "weight_decay": 0.0, "optimizer": "adam",
              "levels": 3, "blocks": 16, "hidden": 128, "epochs": 200.0,
              "lr_decay_at": [60 / 200, 120 / 200, 160 / 200], "lr_decay": 0.1,
              "augment": "crop-flip", "dataset": "cifar10"}
    table6 = {"batch_size": 64, "lr": 5e-4, "weight_decay": 5e-5, "optimizer": "adamax",
              "mixing": "reverse", "levels": 3, "blocks": 32, "hidden": 512, "steps": 100000,
              "warmup_steps": 5 * (50000 // 64), "augment": "translate-flip", "bits": 8,
              "centered": True}
    table7 = {"batch_size": 64, "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 1000,
              "hidden": 512, "levels": 4, "blocks": 16, "actnorm": True, "bits": 5,
              "image_size": 64, "dataset": "celeba64", "centered": False}
    table4 = {"batch_size": 500, "lr": 1e-3, "weight_decay": 1e-5, "optimizer": "adam",
              "hidden": 128, "subnet_layers": 4, "levels": 1, "blocks": 100, "actnorm": False}
    for name in FULL_SIZE:
        cfg = load_config(name).to_dict()
        table = (table8 if "classifier" in name else table6 if name == "cifar10-glow"
                 else table7 if name.startswith("celeba") else table4)
        assert {k: cfg[k] for k in table} == table, name
        assert "not in the paper" in PRESETS[name][0].lower() or "classifier" in name, name
    for name in FULL_SIZE:
        cfg = load_config(name)
        if name.startswith(("celeba64", "checkerboard")):
            variant = name.split("-", 1)[1]
            assert (cfg.arch, cfg.scale) == {"affine": ("glow", "sigmoid"),
                                             "modified-affine": ("glow", "modified"),
                                             "resflow": ("residual", cfg.scale)}[variant]
            if name.startswith("celeba64"):  # Table 7: Adam (ResFlow), Adamax (Affine)
                assert cfg.optimizer == ("adam" if variant == "resflow" else "adamax")
                assert cfg.activation == ("lipswish" if variant == "resflow" else "elu")
    assert load_config("cifar10-classifier-affine-shuffle").mixing == "random"
    assert load_config("cifar10-classifier-additive-1x1conv").coupling == "additive"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """CIFAR-10 at 32x32 and 8x8 and CelebA JPEGs, each a few images, in the real formats."""
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root / "cifar32", n_train=2, n_test=2, side=32)
    write_cifar10(root / "cifar8", n_train=8, n_test=4, side=8)
    write_celeba(root / "celeba", [(10 * i, 200 - 10 * i, 30) for i in range(12)],
                 splits=[0] * 8 + [2] * 4)
    return root


def _config(name, **overrides):
    return TrainConfig.from_dict({**PRESETS[name][1], **overrides}, name)


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_parameter_count_is_the_papers_architecture(name, data_root):
    torch.set_default_dtype(torch.float32)  # the largest model has ~10^8 parameters
    root = {"cifar10": data_root / "cifar32", "celeba64": data_root / "celeba"}
    cfg = _config(name, workers=0, n_train=10,
                  **({"data_root": str(root[PRESETS[name][1]["dataset"]])}
                     if "dataset" in PRESETS[name][1] else {}))
    task = TASKS[cfg.task](cfg, torch.device("cpu"), torch.float32)
    count = sum(p.numel() for p in task.build_flow().parameters())
    head = task.build_head()
    count += 0 if head is None else sum(p.numel() for p in head.parameters())
    assert count == expected_parameters(name)


REDUCED = {"blocks": 1, "hidden": 8, "fc_hidden": 8, "workers": 0, "dtype": "float64",
           "steps": 1, "log_every": 0, "eval_every": 0, "checkpoint_every": 0,
           "monitor_every": 0, "batch_size": 8}


@pytest.mark.parametrize("name", FULL_SIZE)
def test_one_training_step_of_every_preset_at_reduced_size(name, data_root, tmp_path):
    values = dict(REDUCED)
    dataset = PRESETS[name][1].get("dataset")
    if dataset == "cifar10":
        values["data_root"] = str(data_root / "cifar8")  # 8x8 images, 3 levels -> 1x1
    elif dataset == "celeba64":
        values.update(data_root=str(data_root / "celeba"), image_size=16)  # 4 levels -> 1x1
    else:
        values.update(blocks=2, n_train=1000, batch_size=500)
    trainer = Trainer(_config(name, **values), tmp_path, progress=False)
    try:
        modules = [m for m in (trainer.flow, trainer.head) if m is not None]
        before = [p.detach().clone() for m in modules for p in m.parameters()]
        x, y = trainer.next_batch()
        metrics = trainer.train_step(x, y)
        assert torch.isfinite(metrics["loss"])
        after = [p.detach() for m in modules for p in m.parameters()]
        changed = [not torch.equal(a, b) for a, b in zip(before, after)]
        assert all(changed), f"{changed.count(False)} of {len(changed)} parameters unchanged"
        evaluation = trainer.task.evaluate(trainer.flow, trainer.head)
        assert evaluation and all(math.isfinite(v) for v in evaluation.values()), evaluation
    finally:
        trainer.close()


def test_image_batches_are_exact_and_augmentation_resumes(data_root, tmp_path):
    cfg = _config("cifar10-glow", **{**REDUCED, "data_root": str(data_root / "cifar8"),
                                     "levels": 1, "augment": "none"})
    trainer = Trainer(cfg, tmp_path / "a", progress=False)
    index = torch.tensor([3, 0, 7])
    gen = torch.Generator().manual_seed(5)
    x, _ = trainer.task.batch(index, gen)
    k = trainer.task.train_set.images[index].double()
    u = (x + 0.5) * 256 - k  # x = (k + u) / 256 - 1/2
    assert x.dtype == torch.float64 and float(u.min()) >= 0 and float(u.max()) < 1
    trainer.close()
    # a flip or translation moves whole pixels: the multiset of levels per channel of a flipped
    # image is the original's, and the same generator state draws the same batch
    cfg = _config("cifar10-classifier-affine-1x1conv",
                  **{**REDUCED, "data_root": str(data_root / "cifar8"), "augment": "flip"})
    trainer = Trainer(cfg, tmp_path / "b", progress=False)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, ya = trainer.task.batch(index, g1)
    b, yb = trainer.task.batch(index, g2)
    assert torch.equal(a, b) and torch.equal(ya, trainer.task.train_set.labels[index])
    plain = trainer.task.inputs(trainer.task.train_set.images[index], None)
    for i in range(3):
        assert torch.equal(a[i], plain[i]) or torch.equal(a[i], plain[i].flip(-1))
    trainer.close()


@pytest.mark.parametrize("values, message", [
    ({"dataset": "mnist"}, "dataset must be one of ['cifar10', 'svhn', 'celeba64']"),
    ({"task": "density", "dataset": "cifar10"}, "dataset is for the tasks classifier and flow"),
    ({"dataset": "celeba64"}, "dataset 'celeba64' has no class labels; it is for task 'flow'"),
    ({"task": "flow", "dataset": "cifar10", "bits": 9}, "bits must be in 1..8"),
    ({"task": "flow", "dataset": "cifar10", "bits": 0}, "bits must be in 1..8"),
    ({"task": "flow", "bits": 5}, "bits 5 needs a dataset"),
    ({"image_size": 64}, "image_size must be null or, with a dataset, >= 1"),
    ({"augment": "mixup"}, "augment must be one of ['none', 'flip', 'crop-flip'"),
    ({"task": "regression", "augment": "flip"}, "augment is for the image tasks"),
    ({"workers": -1}, "workers must be >= 0"),
    ({"bits": "5"}, "bits must be an integer, got '5'"),
    ({"data_root": ""}, "data_root must be a folder name"),
    ({"arch": "residual", "task": "flow", "activation": "silu"},
     "activation of arch 'residual' must be one of ['elu', 'relu', 'tanh', 'lipswish']"),
    ({"fc_blocks": 2}, "fc_blocks are for arch 'residual' with task 'flow'"),
    ({"arch": "residual"}, "arch 'residual' is for the tasks flow, regression and density"),
])
def test_bad_data_settings_name_the_key(values, message):
    with pytest.raises(InputError, match="^cfg: .*" + message.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
                       .replace("|", r"\|").replace(".", r"\.")):
        TrainConfig.from_dict(values, "cfg")


def test_missing_data_root_names_the_path_and_the_download(tmp_path):
    cfg = _config("cifar10-classifier-additive-1x1conv", data_root=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match=r"data_root '.*none' is not a folder; get the "
                                                r"data with torchvision.datasets.CIFAR10\("):
        Trainer(cfg, tmp_path / "run", progress=False)


def _shifted(image, dy, dx):
    """``image`` moved down by ``dy`` and right by ``dx`` pixels, zero fill."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.mark.parametrize("kind, margin", [("crop-flip", 4), ("translate-flip", 2)])
def test_augmentation_is_a_zero_filled_shift_and_flip(kind, margin):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (200, 3, 20, 20), generator=gen, dtype=torch.uint8)
    out = augment_batch(images, kind, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    seen = set()
    for image, result in zip(images, out):
        found = [(dy, dx, flip) for dy in range(-margin, margin + 1)
                 for dx in range(-margin, margin + 1) for flip in (False, True)
                 if torch.equal(result, _shifted(image.flip(-1) if flip else image, dy, dx))]
        assert len(found) == 1, found  # levels >= 1, so the zero fill tells the shift
        seen.add(found[0])
    # 200 draws from (2 m + 1)^2 * 2 outcomes reach the extremes of the range
    assert {s[0] for s in seen} == set(range(-margin, margin + 1))
    assert {s[2] for s in seen} == {False, True}
    assert torch.equal(augment_batch(images, "none", gen), images)


def test_image_run_resumes_bit_for_bit_with_augmentation(data_root, tmp_path):
    from lipbound.training.trainers import train

    values = {**REDUCED, "data_root": str(data_root / "cifar8"), "levels": 1, "hidden": 4,
              "steps": 4, "batch_size": 4, "checkpoint_every": 1, "augment": "translate-flip"}

    def stop_at(step):
        def callback(trainer, s, record):
            if s == step:
                raise KeyboardInterrupt
        return callback

    for name in ("cifar10-glow", "cifar10-classifier-affine-shuffle"):
        cfg = _config(name, **values)
        full = train(cfg, tmp_path / name / "full", progress=False)
        part = train(cfg, tmp_path / name / "part", progress=False, callbacks=(stop_at(2),))
        assert part.status == "interrupted" and part.step == 2
        moved = tmp_path / name / "moved"  # the data may move between interruption and resume
        shutil.copytree(data_root / "cifar8", moved)
        cfg_moved = _config(name, **{**values, "data_root": str(moved)})
        done = train(cfg_moved, tmp_path / name / "part", resume=True, progress=False)
        assert done.step == full.step == 4
        a = torch.load(tmp_path / name / "full" / "checkpoint.pt", weights_only=False)["flow"]
        b = torch.load(tmp_path / name / "part" / "checkpoint.pt", weights_only=False)["flow"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.filterwarnings("ignore:step .* condition number")
def test_cli_data_root(data_root, tmp_path, capsys):
    import json

    from cli_helpers import cli_error

    from lipbound.cli import main

    message = cli_error(["train", "celeba64-affine", "--data-root", str(tmp_path / "none"),
                         "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert "data_root" in message and "none' is not a folder" in message
    assert "torchvision.datasets.CelebA(" in message
    config = tmp_path / "small.json"
    config.write_text(json.dumps({"preset": "cifar10-classifier-additive-shuffle", "blocks": 1,
                                  "hidden": 8, "batch_size": 8, "workers": 0}))
    out = tmp_path / "run"
    assert main(["train", str(config), "--data-root", str(data_root / "cifar8"), "--steps", "2",
                 "--out", str(out), "--no-progress"]) == 0
    assert "done at step 2" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["data_root"] == str(data_root / "cifar8") and saved["dataset"] == "cifar10"


@pytest.mark.parametrize("name", ["cifar10-classifier-affine-1x1conv", "cifar10-glow"])
def test_batched_evaluation_equals_one_pass(name, data_root, tmp_path):
    from lipbound.training.tasks import Task

    cfg = _config(name, **{**REDUCED, "data_root": str(data_root / "cifar8"), "batch_size": 3})
    trainer = Trainer(cfg, tmp_path, progress=False)
    try:
        x, y = trainer.next_batch()
        trainer.train_step(x, y)  # initialises ActNorm, moves BatchNorm's statistics
        batched = trainer.task.evaluate(trainer.flow, trainer.head)  # test batches of 3 and 1
        whole = Task.evaluate(trainer.task, trainer.flow, trainer.head)  # one pass of all 4
        assert batched.keys() == whole.keys()
        for k in whole:
            assert batched[k] == pytest.approx(whole[k], rel=1e-12, abs=1e-12), k
    finally:
        trainer.close()


def test_checkpoints_without_the_data_keys_still_resume(tmp_path):
    from lipbound.training import load_checkpoint, save_checkpoint
    from lipbound.training.trainers import train

    cfg = TrainConfig.from_dict({"task": "density", "levels": 1, "blocks": 1, "hidden": 4,
                                 "mixing": "reverse",
                                 "n_train": 64, "batch_size": 32, "steps": 2, "log_every": 1,
                                 "monitor_every": 0, "checkpoint_every": 1})
    train(cfg, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    new_keys = ("dataset", "data_root", "bits", "image_size", "augment", "workers", "centered",
                "activation", "subnet_layers", "fc_blocks", "fc_hidden", "series_terms")
    state["config"] = {k: v for k, v in state["config"].items() if k not in new_keys}
    save_checkpoint(state, tmp_path / "checkpoint.pt")  # as an older lipbound wrote it
    more = TrainConfig.from_dict({**cfg.to_dict(), "steps": 3})
    assert train(more, tmp_path, resume=True, progress=False).step == 3


def test_checkpoint_network_rebuilds_without_the_data(tmp_path):
    """``lipbound verify`` on a checkpoint of an image run: the network comes from the stored
    config and input shape, so the data folder is not read (here: deleted after training)."""
    from lipbound.precision.verify_cli import load_network

    root = tmp_path / "data"
    write_cifar10(root, n_train=8, n_test=4, side=8)
    cfg = _config("cifar10-classifier-affine-1x1conv", data_root=str(root), workers=0,
                  levels=1, blocks=1, hidden=4, batch_size=8, steps=1, epochs=None,
                  dtype="float64", monitor_every=0, monitor_samples=1, monitor_batch=2,
                  eval_every=0)
    run = tmp_path / "run"
    result = train(cfg, run, progress=False)
    assert result.status == "done"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["input_shape"] == [3, 8, 8]
    shutil.rmtree(root)
    net = load_network(run / "checkpoint.pt")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state["flow"].items())
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    saved = torch.load(run / "model.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(net(x), saved.eval()(x))


def test_gpu_benchmark_trains_with_the_presets_batch(monkeypatch):
    """``benchmarks/gpu.py`` measures the classifier at the batch of its preset (Table 8: 128),
    and at Table 8's 128 when the preset does not exist."""
    import importlib
    import sys
    from pathlib import Path

    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        module = importlib.import_module("gpu")  # and benchmarks/training.py as "training"
    finally:
        for name in ("gpu", "training"):
            if name not in before:
                sys.modules.pop(name, None)
    preset = PRESETS[module.PRESET][1]
    assert preset["batch_size"] == 128
    assert module.full_size().batch == preset["batch_size"]
    assert module.full_size().shape == (3, 32, 32)
    monkeypatch.setattr(module, "PRESET", "no-such-preset")
    assert module.full_size().batch == 128
