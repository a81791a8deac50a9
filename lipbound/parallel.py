"""Per-sample work over a dataset: serially, on local processes, or on a Dask cluster, streamed
to a JSON-lines file that a rerun resumes.

Certifying a model against the oracle costs seconds to minutes per sample (51 s per CIFAR-10
image for the paper's classifier at ``arb:113`` on one core), so :func:`map_samples` runs one
function per sample with one of three engines, all calling the same function on the same
arguments so that the numbers are the same:

* serially in this process (the default);
* ``workers=N``: :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method;
  the model and the inputs are shipped once per worker process (its initializer), each task
  names only a sample index;
* ``scheduler="tcp://HOST:8786"``: a Dask distributed cluster (``pip install
  'lipbound[cluster]'``); :meth:`distributed.Client.scatter` broadcasts the model and the
  inputs to every worker once, :meth:`~distributed.Client.submit` runs one task per sample and
  :func:`distributed.as_completed` returns them as they finish.

Every sample runs with one torch thread (on every engine, restored afterwards): the float
kernels may round differently with another thread count, and the oracle, which dominates, is
single-threaded anyway.

**The results file** (``out``, JSON lines): a header line (``{"lipbound_samples": 1, ...}``)
holding the fingerprint of the run (SHA-256 of the model's structure and stored tensors, of the
inputs, and the settings of the per-sample function), then one line per sample, ``{"sample": i,
...}``, appended and flushed as each result arrives (in completion order). A rerun with the same
model, inputs and settings skips the samples already in the file and computes the others; a
last line cut off by a crash is dropped and its sample recomputed; a file written for another
model, other inputs or other settings is refused (:class:`~lipbound.errors.InputError`), never
mixed. Ctrl-C loses only the samples in flight.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import hashlib
import json
import multiprocessing
import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .errors import InputError, LipboundError
from .io import check_output_path
from .jsonio import jsonable

__all__ = ["CLUSTER_EXTRA", "HEADER_KEY", "ResultsFile", "SampleFunction", "check_engine",
           "fingerprint", "map_samples"]

#: ``fn(model, x_i, i)`` with ``x_i = x[i:i+1]``: a JSON-ready dict of sample ``i``'s results.
#: It must be picklable (a module-level function or an instance of a module-level class) to run
#: on workers, and must not modify ``model`` (a worker keeps one copy for all its samples).
SampleFunction = Callable[[nn.Module, Tensor, int], dict[str, Any]]

#: The key that marks the header line of a results file, and its format version.
HEADER_KEY, HEADER_VERSION = "lipbound_samples", 1

#: How to install what ``scheduler`` needs.
CLUSTER_EXTRA = "pip install 'lipbound[cluster]'"


def check_engine(workers: int | None, scheduler: str | None) -> None:
    """:class:`InputError` for ``--workers`` below 1, ``--workers`` together with
    ``--scheduler``, a ``--scheduler`` that is not a Dask address, or Dask not installed."""
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1 (local processes), got {workers}")
    if workers is not None and scheduler is not None:
        raise InputError("--workers and --scheduler exclude each other: --workers N runs N local "
                         "processes, --scheduler ADDRESS runs on the Dask cluster's workers "
                         "(size it with 'dask worker ADDRESS --nworkers N')")
    if scheduler is not None:
        _check_address(scheduler)


def _check_address(address: str) -> None:
    """:class:`InputError` naming ``--scheduler`` when Dask is missing or ``address`` is not of
    the form ``tcp://HOST:PORT`` (or another Dask scheme)."""
    try:
        import distributed  # noqa: F401  (its absence is the error, even with submodules loaded)
        from distributed.comm.addressing import parse_address, parse_host_port
    except ImportError as err:
        raise InputError(f"--scheduler needs Dask distributed, which is not installed: "
                         f"{CLUSTER_EXTRA}") from err
    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except (ValueError, TypeError) as err:
        raise InputError(f"--scheduler {address!r} is not a Dask scheduler address ({err}); "
                         "expected tcp://HOST:PORT, e.g. tcp://node1:8786") from err


# -- fingerprints -------------------------------------------------------------------------------

def _tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of ``t`` (any dtype, bfloat16 included), with its dtype and shape."""
    t = t.detach().cpu().contiguous()
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    return head + t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _model_digest(model: nn.Module) -> str:
    """SHA-256 of the model's structure (its ``repr``, which shows every module's settings,
    without memory addresses) and of every stored tensor (parameters and buffers, by name)."""
    h = hashlib.sha256(re.sub(r" at 0x[0-9a-fA-F]+", "", repr(model)).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def fingerprint(model: nn.Module, x: Tensor, settings: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run's results: SHA-256 of the model and of the inputs, the number and
    shape of the samples, and ``settings`` (JSON-ready: what the per-sample function depends
    on)."""
    return {"model_sha256": _model_digest(model),
            "inputs_sha256": hashlib.sha256(_tensor_bytes(x)).hexdigest(),
            "n_samples": int(x.shape[0]), "sample_shape": list(x.shape[1:]),
            "settings": jsonable(settings)}


# -- the results file ---------------------------------------------------------------------------

def _mismatch(path: Path, saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between the fingerprint in the file and this run's, in words; ``None`` when
    nothing does."""
    differ = []
    if saved.get("model_sha256") != now["model_sha256"]:
        differ.append("another model (its structure or stored tensors differ)")
    if (saved.get("inputs_sha256") != now["inputs_sha256"]
            or saved.get("sample_shape") != now["sample_shape"]
            or saved.get("n_samples") != now["n_samples"]):
        differ.append(f"other inputs ({saved.get('n_samples')} samples of shape "
                      f"{saved.get('sample_shape')} in the file, {now['n_samples']} of shape "
                      f"{now['sample_shape']} now, or other values)")
    old, new = saved.get("settings") or {}, now["settings"]
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if keys:
        differ.append("other settings (" + ", ".join(
            f"{k}: {old.get(k)!r} in the file, {new.get(k)!r} now" for k in keys) + ")")
    if not differ:
        return None
    return (f"--out {str(path)!r} holds results of {' and '.join(differ)}; pass another --out, "
            "or delete the file to start afresh (rerun with the same model, inputs and options "
            "to resume it)")


@dataclass
class ResultsFile:
    """A JSON-lines results file: the header, then one line per sample (see the module)."""

    path: Path
    header: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, header: dict[str, Any], n_samples: int
             ) -> tuple[ResultsFile, dict[int, dict[str, Any]]]:
        """The file at ``path`` and the results it already holds, by sample; a new file gets
        ``header`` (which must hold the :func:`fingerprint` keys). A last line without its
        newline (cut off mid-write) is removed; :class:`InputError` for a file written for
        another run, a damaged line before the last, or a sample index outside ``0..n-1``."""
        path = check_output_path(path, "--out", (".jsonl",))
        header = {HEADER_KEY: HEADER_VERSION, **header}
        done: dict[int, dict[str, Any]] = {}
        data = path.read_bytes() if path.exists() else b""
        cut = data.rfind(b"\n") + 1  # a last line without "\n" was cut off mid-write
        lines = data[:cut].decode("utf-8", errors="replace").splitlines()
        if not lines and data and not data.startswith(b'{"' + HEADER_KEY.encode()):
            raise InputError(f"--out {str(path)!r} exists and is not a lipbound results file; "
                             "pass another --out (the file is not overwritten)")
        if not lines:  # new, empty, or only a cut-off header: start afresh
            path.write_text(json.dumps(header, allow_nan=False) + "\n")
            return cls(path, header), done
        try:
            saved = json.loads(lines[0])
        except json.JSONDecodeError:
            saved = None
        if not isinstance(saved, dict) or saved.get(HEADER_KEY) != HEADER_VERSION:
            raise InputError(f"--out {str(path)!r} exists and its first line is not the header "
                             "of a lipbound results file; pass another --out (the file is not "
                             "overwritten)")
        why = _mismatch(path, saved, header)
        if why:
            raise InputError(why)
        for number, line in enumerate(lines[1:], start=2):
            record = cls._parse(path, line, number)
            i = record.get("sample")
            if not isinstance(i, int) or not 0 <= i < n_samples:
                raise InputError(f"--out {str(path)!r} line {number}: 'sample' must be an index "
                                 f"in 0..{n_samples - 1}, got {i!r}")
            done.setdefault(i, record)
        if cut != len(data):
            with open(path, "r+b") as f:  # drop the cut-off line; its sample is recomputed
                f.truncate(cut)
        return cls(path, header), done

    @staticmethod
    def _parse(path: Path, line: str, number: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"--out {str(path)!r} line {number} is not JSON ({err.msg}); only "
                             "a cut-off last line is tolerated: pass another --out") from err
        if not isinstance(record, dict):
            raise InputError(f"--out {str(path)!r} line {number} is not a JSON object")
        return record

    def append(self, record: dict[str, Any]) -> None:
        """Write one result line and flush it to the operating system."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
            f.flush()


# -- the engines --------------------------------------------------------------------------------

@contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_one(fn: SampleFunction, model: nn.Module, x: Tensor, i: int) -> dict[str, Any]:
    """The one per-sample call of every engine: ``fn(model, x[i:i+1], i)`` on one torch thread,
    made JSON-ready and normalised through a JSON round trip (so a result read back from the
    results file is the same as one computed now)."""
    with _one_thread():
        record = fn(model, x[i:i + 1], i)
    record = {"sample": i, **{k: v for k, v in record.items() if k != "sample"}}
    return json.loads(json.dumps(jsonable(record), allow_nan=False))


def _serial(fn: SampleFunction, model: nn.Module, x: Tensor, todo: list[int]
            ) -> Iterator[dict[str, Any]]:
    for i in todo:
        yield _run_one(fn, model, x, i)


#: The worker process's function, model and inputs, set once by :func:`_init_worker`.
_WORKER: tuple[SampleFunction, nn.Module, Tensor] | None = None


def _init_worker(payload: bytes) -> None:
    """Initializer of a worker process: unpickle the function, model and inputs once."""
    global _WORKER
    _WORKER = pickle.loads(payload)


def _worker_sample(i: int) -> dict[str, Any]:
    assert _WORKER is not None, "the worker was started without its initializer"
    return _run_one(*_WORKER, i)


def _processes(fn: SampleFunction, model: nn.Module, x: Tensor, todo: list[int], workers: int
               ) -> Iterator[dict[str, Any]]:
    """``workers`` spawned processes; the pickled (function, model, inputs) is each worker's
    initializer argument, so it travels once per worker, and each task is an index."""
    payload = pickle.dumps((fn, model, x))
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, max(len(todo), 1)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(payload,))
    try:
        futures = [pool.submit(_worker_sample, i) for i in todo]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()
    except concurrent.futures.process.BrokenProcessPool as err:
        raise LipboundError(f"a --workers process ended abruptly (killed, or out of memory?): "
                            f"{err}; the finished samples are kept in --out, if given: rerun "
                            "to compute the others") from err
    finally:  # an error, Ctrl-C or a consumer that stops: drop the samples not started
        pool.shutdown(wait=True, cancel_futures=True)


def _dask_sample(fn: SampleFunction, model: nn.Module, x: Tensor, i: int) -> dict[str, Any]:
    return _run_one(fn, model, x, i)


def _dask_client(address: str, timeout: float) -> Any:
    """A :class:`distributed.Client` connected to ``address`` (checked by
    :func:`check_engine`); :class:`InputError` naming ``--scheduler`` when no scheduler answers
    within ``timeout`` seconds."""
    from distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise InputError(f"--scheduler {address!r}: no Dask scheduler answered within "
                         f"{timeout:g} s ({type(err).__name__}: {err}); start one with "
                         "'dask scheduler' and pass its address, tcp://HOST:8786") from err


def _dask(fn: SampleFunction, model: nn.Module, x: Tensor, todo: list[int], address: str,
          timeout: float) -> Iterator[dict[str, Any]]:
    """One Dask task per sample; the model and inputs are scattered (broadcast) to every worker
    once, and each task refers to them and names an index."""
    client = _dask_client(address, timeout)
    from distributed import KilledWorker, as_completed

    futures: list[Any] = []
    try:
        model_f, x_f = client.scatter([model, x], broadcast=True, hash=False)
        futures = [client.submit(_dask_sample, fn, model_f, x_f, i, pure=False) for i in todo]
        for future in as_completed(futures, loop=client.loop):
            yield future.result()
    except KilledWorker as err:
        raise LipboundError(f"--scheduler {address!r}: Dask gave up on a sample after its "
                            f"workers died running it ({err}); the finished samples are kept "
                            "in --out, if given: rerun to compute the others") from err
    finally:
        if futures:
            client.cancel(futures)
        client.close()


def map_samples(fn: SampleFunction, model: nn.Module, x: Tensor, *, workers: int | None = None,
                scheduler: str | None = None, out: str | Path | None = None,
                settings: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
                progress: bool = False,
                desc: str = "samples", connect_timeout: float = 10.0) -> list[dict[str, Any]]:
    """``fn(model, x[i:i+1], i)`` for every sample ``i``, as JSON-ready dicts sorted by sample.

    Args:
        fn: the per-sample function (:data:`SampleFunction`); every engine calls it alike.
        model: the model, shipped once to each worker.
        x: the inputs, batch first (shipped once to each worker).
        workers: run on this many local processes (``spawn``); ``None``: in this process.
        scheduler: the address of a Dask scheduler to run on instead (``tcp://HOST:8786``).
        out: a ``.jsonl`` results file: written line by line as results arrive, and resumed
            (see the module); ``None``: no file.
        settings: what ``fn`` computes with besides the model and the inputs (JSON-ready):
            part of the file's fingerprint (:func:`fingerprint`), checked on resume.
        info: more for the file's header, not checked (e.g. the command and file names).
        progress: a tqdm bar over the samples on stderr.
        desc: the bar's label.
        connect_timeout: seconds to wait for the Dask scheduler.

    Raises:
        InputError: bad ``workers``/``scheduler``, an unreachable scheduler, Dask not installed,
            or a results file of another run.
    """
    check_engine(workers, scheduler)
    n = int(x.shape[0])
    done: dict[int, dict[str, Any]] = {}
    results = None
    if out is not None:
        header = {**(info or {}), **fingerprint(model, x, settings or {})}
        results, done = ResultsFile.open(out, header, n)
    todo = [i for i in range(n) if i not in done]
    if not todo:
        engine: Iterator[dict[str, Any]] = iter(())
    elif scheduler is not None:
        engine = _dask(fn, model, x, todo, scheduler, connect_timeout)
    elif workers is not None:
        engine = _processes(fn, model, x, todo, workers)
    else:
        engine = _serial(fn, model, x, todo)
    with tqdm(total=n, initial=len(done), desc=desc, unit="sample", disable=not progress) as bar:
        try:
            for record in engine:
                if results is not None:
                    results.append(record)
                done[record["sample"]] = record
                bar.update()
        finally:
            close = getattr(engine, "close", None)
            if close is not None:
                close()
    return [done[i] for i in range(n)]

