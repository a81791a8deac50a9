"""``lipbound train PRESET|CONFIG``: train one of the paper's settings with the stability monitor.

PRESET is one of the names ``--list`` shows (CPU scale, minutes; or the paper's models at full
size on the datasets in ``--data-root``, for a GPU); CONFIG is a ``.json`` or
``.toml`` file of :class:`~lipbound.training.trainers.TrainConfig` keys (optionally ``"preset"``
to start from one). The options below override the preset or file. The run folder gets
``log.jsonl``, ``checkpoint.pt``, ``model.pt``, ``config.json`` and ``summary.json``; Ctrl-C
writes a checkpoint and ``--resume`` continues it exactly.

On several GPUs (or CPU processes), launch it with torchrun:
``torchrun --standalone --nproc_per_node N -m lipbound train PRESET --device cuda ...``; each
process takes its part of the global batch (:mod:`lipbound.training.distributed`) and rank 0
writes the run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from ..io import check_output_folder
from ..jsonio import dump_json
from .amp import AMP_MODES
from .distributed import session
from .presets import PRESETS, load_config
from .trainers import REGULARIZERS, train

__all__ = ["add_arguments", "run"]

_FROM = "default: the preset's or config's value (see --list)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``lipbound train``."""
    p.description = __doc__.split("\n\n")[0].replace("\n", " ")
    p.add_argument("target", metavar="PRESET|CONFIG", nargs="?",
                   help=f"a preset ({', '.join(PRESETS)}) or a .json/.toml config file")
    p.add_argument("--list", action="store_true",
                   help="list the presets with their settings and exit (default: off)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run folder (default: runs/<preset or config file name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (default: off, a new run; "
                        "a folder that holds one is refused)")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda or cuda:N; under torchrun cuda gives each process the GPU of "
                        "its LOCAL_RANK (default: cpu)")
    p.add_argument("--amp", choices=AMP_MODES, default=None,
                   help="automatic mixed precision of a float32 model: bf16, or fp16 with a "
                        f"gradient scaler; none: off ({_FROM}; presets: none)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last (NHWC) memory format for images and convolution weights: "
                        "faster convolutions on CUDA, mostly with --amp (tensor cores); image "
                        "tasks only (default: off)")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="BACKEND",
                   help="torch.compile the network (optionally with this backend, e.g. "
                        "aot_eager); not with memory-saving gradients, which it cannot trace "
                        "(default: off)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels: torch.use_deterministic_algorithms, cuDNN "
                        "deterministic without benchmarking (default: off)")
    p.add_argument("--regularizer", choices=REGULARIZERS, default=None,
                   help=f"none, fd (finite differences, eq. 6) or nf (flow NLL, eq. 7) ({_FROM}; "
                        "all presets: none)")
    p.add_argument("--coeff", type=float, default=None,
                   help=f"regularizer coefficient ({_FROM})")
    p.add_argument("--every", "-K", type=int, default=None, metavar="K",
                   help=f"apply the regularizer every K steps ({_FROM})")
    p.add_argument("--memory-saving", action=argparse.BooleanOptionalAction, default=None,
                   help=f"memory-saving gradients on/off ({_FROM}; digits-classifier: on, the "
                        "others: off)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps, replacing the epochs ({_FROM})")
    p.add_argument("--epochs", type=float, default=None,
                   help=f"epochs, replacing the steps ({_FROM})")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="folder of the image datasets, torchvision's root: cifar-10-batches-py/, "
                        "{train,test}_32x32.mat, celeba/ (default: the config's data_root, data; "
                        "read by the presets cifar10-*, celeba64-*)")
    p.add_argument("--seed", type=int, default=None, help=f"random seed ({_FROM}; presets: 0)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32", "float64"],
                   default=None, help=f"training precision ({_FROM}; presets: float32)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bar (default: shown on stderr)")


def _list_presets() -> None:
    for name, (description, values) in PRESETS.items():
        print(f"{name}: {description}")
        print("    " + ", ".join(f"{k}={v}" for k, v in values.items()))


def run(args: argparse.Namespace) -> int:
    """Run ``lipbound train``."""
    if args.list:
        _list_presets()
        return 0
    if args.target is None:
        raise InputError(f"give a PRESET ({', '.join(PRESETS)}) or a CONFIG file (.json/.toml); "
                         "--list shows the presets")
    overrides = {"regularizer": args.regularizer, "coeff": args.coeff, "every": args.every,
                 "memory_saving": args.memory_saving, "steps": args.steps,
                 "epochs": args.epochs, "seed": args.seed, "dtype": args.dtype,
                 "data_root": args.data_root, "amp": args.amp}
    config = load_config(args.target, overrides)
    out = check_output_folder(args.out or Path("runs") / Path(args.target).stem, "--out")
    with session(args.device) as ctx:
        if not args.resume and ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
        result = train(config, out, args.device, resume=args.resume,
                       progress=not args.no_progress, channels_last=args.channels_last,
                       compile=args.compile, deterministic=args.deterministic)
    if not ctx.is_main:
        return _exit_code(result.status)
    dump_json(config.to_dict(), out / "config.json")
    train_figures = ", ".join(f"{k} {v:.4g}" for k, v in result.train.items()
                              if isinstance(v, float))
    amp = "" if config.amp == "none" else f", amp {config.amp}"
    skipped = (f", {result.skipped_steps} steps skipped by the fp16 scaler"
               if config.amp == "fp16" else "")
    processes = f" on {result.processes} processes" if result.processes > 1 else ""
    print(f"lipbound train: {args.target} -> {out}: {result.status} at step {result.step} "
          f"(epoch {result.epoch}{processes}; {config.dtype}{amp}{skipped}); {train_figures}")
    if result.eval:
        print("  eval: " + ", ".join(f"{k} {v:.4g}" for k, v in result.eval.items()
                                     if isinstance(v, float)))
    if result.monitor is not None:
        m = result.monitor
        recon = m["reconstruction"]
        nan = float("nan")
        at = m["precision"] + ("" if m.get("amp", "none") == "none" else f", amp {m['amp']}")
        print(f"  monitor ({at}): condition {m.get('condition', nan):.3g}, "
              f"sigma_min {m.get('sigma_min', nan):.3g}, sigma_max {m.get('sigma_max', nan):.3g}"
              f" (at latent points: condition {m.get('latent_condition', nan):.3g}); round trip "
              "max " + ", ".join(f"{d} {_fmt(r['max'])} ({r['n_nan']} NaN, {r['n_inf']} Inf)"
                                 for d, r in recon.items()))
        grad = m.get("gradient", {})
        if "max_angle_deg" in grad:
            print(f"  memory-saving vs true gradient on the monitor batch: angle "
                  f"{grad['max_angle_deg']:.3g} deg, relative difference "
                  f"{grad['max_rel_norm_diff']:.3g}")
    print(f"  memory-saving fallbacks: {result.fallbacks}")
    if result.status == "interrupted":
        print(f"  interrupted: checkpoint in {out / 'checkpoint.pt'}; continue with "
              f"lipbound train {args.target} --out {out} --resume", file=sys.stderr)
    return _exit_code(result.status)


def _exit_code(status: str) -> int:
    return {"done": 0, "interrupted": 130}.get(status, 1)


def _fmt(value: float | None) -> str:
    return "none finite" if value is None else f"{value:.3g}"
