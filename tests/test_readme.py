"""Every ```bash and ```python block of README.md runs verbatim and succeeds.

The blocks run in document order in one fresh folder (so later blocks find the files that
``lipbound example`` wrote), as a user who cloned the repository would run them: the folder holds
the clone's ``examples/``, and ``lipbound`` and ``python`` on ``PATH`` are this interpreter with
this checkout importable. Each line of a bash block is run by ``bash -c``; each python block is
executed in a fresh namespace with torch's default dtype float32, as in a new interpreter.
The lines of :data:`SKIPPED` are not run (the reason is beside each); any other line is.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: README lines that are not run, and why.
SKIPPED = {
    "pip install torch==2.13.0 -e . && lipbound sweep":
        "installs the package (the environment's job); the sweep is tested in tests/test_sweep.py",
    'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q':
        "installs the package with the test extra and runs the suite this test is part of",
}

#: Libraries that README python blocks may import from an extra; a block importing one that is
#: not installed is reported as skipped.
OPTIONAL = ("FrEIA", "nflows", "zuko", "normflows", "memcnn", "sklearn")

_FENCE = re.compile(r"^```(bash|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[int, str, str]]:
    """``(line number of the fence, language, code)`` of every bash and python block."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
            for m in _FENCE.finditer(text)]


def _bash_lines(code: str) -> list[str]:
    return [ln.strip() for ln in code.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_readme_blocks_are_found_and_skips_are_explicit():
    blocks = readme_blocks()
    langs = [lang for _, lang, _ in blocks]
    assert langs.count("bash") >= 6 and langs.count("python") >= 4
    lines = [ln for _, lang, code in blocks if lang == "bash" for ln in _bash_lines(code)]
    # every skipped line is in the README, and nothing else is skipped: a skipped line is
    # matched whole, so a command chained to it with && would not be skipped silently
    assert set(SKIPPED) <= set(lines)
    assert not [ln for ln in lines if ln not in SKIPPED and ("pip " in ln or "pytest" in ln)]


def _missing_optional(code: str) -> list[str]:
    imported = set(re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", code, re.MULTILINE))
    return [lib for lib in OPTIONAL if lib in imported and importlib.util.find_spec(lib) is None]


def _environment(tmp_path: Path) -> dict[str, str]:
    """``PATH`` with ``lipbound`` and ``python`` of this interpreter, this checkout importable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "lipbound"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lipbound "$@"\n')
    shim.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["MPLBACKEND"] = "Agg"
    return env


def test_readme_examples_run_verbatim(tmp_path, monkeypatch, capsys):
    env = _environment(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(work)
    torch.set_default_dtype(torch.float32)  # a new interpreter's default (conftest restores)
    not_run = []
    for lineno, lang, code in readme_blocks():
        where = f"README.md:{lineno}"
        if lang == "bash":
            for line in _bash_lines(code):
                if line in SKIPPED:
                    continue
                run = subprocess.run(["bash", "-c", line], cwd=work, env=env,
                                     capture_output=True, text=True, timeout=600, check=False)
                assert run.returncode == 0, (f"{where}: {line!r} exited {run.returncode}\n"
                                             f"{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
            continue
        missing = _missing_optional(code)
        if missing:
            not_run.append(f"{where} (needs {', '.join(missing)})")
            continue
        exec(compile(code, where, "exec"), {"__name__": "__readme__"})
        capsys.readouterr()
    if not_run:
        pytest.skip("README python blocks not run: " + "; ".join(not_run))
