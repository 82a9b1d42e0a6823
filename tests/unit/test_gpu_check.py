"""scripts/gpu_check.sh's CPU-safe parts: what it installs beside a GPU machine's own torch, and
its plan (--dry-run), which installs and runs nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.gpu_check import REPO_ROOT, TORCH_FAMILY, _name, constraints, model_wheel, requirements


def test_requirements_leave_torch_to_the_machine_and_add_what_the_gpu_tests_import() -> None:
    names = [_name(r) for r in requirements()]
    assert not [n for n in names if TORCH_FAMILY.match(n)]
    assert {"speechbrain", "faiss-cpu", "silero-vad", "pytest", "soundfile", "setuptools"} <= set(names)


def test_constraints_pin_the_present_torch_and_keep_every_other_pin() -> None:
    pins = constraints("2.11.0+cu130", "2.11.0+cu130")
    assert pins[-2:] == ["torch==2.11.0+cu130", "torchaudio==2.11.0+cu130"]
    assert not [p for p in pins[:-2] if TORCH_FAMILY.match(_name(p))]
    project_pins = [
        line
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    kept = [p for p in project_pins if not TORCH_FAMILY.match(_name(p))]
    assert pins[:-2] == kept
    assert any(_name(p) == "triton" for p in project_pins)  # so the filter had something to drop


@pytest.mark.slow
def test_dry_run_plans_install_tests_and_bench_without_doing_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--dry-run"],
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    plan = done.stderr + done.stdout  # the tests and the bench print through tee
    from importlib.metadata import version

    assert f"torch {version('torch')}, torchaudio {version('torchaudio')}" in plan
    assert "venv --system-site-packages .gpu-venv" in plan
    assert "machine-python.pth" in plan  # the interpreter's own packages, when it is a virtualenv
    assert re.search(r"pip install -q -c \S+/constraints-gpu.txt -r \S+/requirements-gpu.txt", plan)
    assert f"-e . {model_wheel()}" in plan
    assert "pytest -m gpu" in plan and "tests/model/test_gpu.py" in plan
    assert "scripts.bench --only gpu,http --device cuda" in plan
    assert (out / "requirements-gpu.txt").read_text().split() == requirements()
    assert f"torch=={version('torch')}" in (out / "constraints-gpu.txt").read_text().split()
    assert not (REPO_ROOT / ".gpu-venv").exists()  # nothing installed
