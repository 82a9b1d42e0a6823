"""A wheel built from the project installs into a fresh environment and serves from there.

The wheel is built without network (`--no-build-isolation`) from a copy of what it is built from,
installed with `--no-deps` into a new virtual environment that sees this interpreter's packages
through a `.pth` file (the dependencies are gigabytes), and run from a folder outside the repository,
so nothing of the checkout is on `sys.path`: the migrations and the model manifest must come from
inside the installed package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import httpx
import pytest

from devtools.server import ServerProcess, server_env
from devtools.sets import REPO_ROOT
from tests.conftest import flac_body, needs_speech

pytestmark = [pytest.mark.slow, needs_speech]

# What the wheel is built from (pyproject.toml names the rest of it).
SOURCES = ("pyproject.toml", "README.md", "service", "migrations", "models")
CLIP = "librispeech/test-other/367/367-130732-0002.flac"


def build_wheel(into: Path) -> Path:
    source = into / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(into / "dist"), str(source)],
        check=True,
        timeout=600,
    )
    (wheel,) = (into / "dist").glob("speakerid-*.whl")
    return wheel


def fresh_venv(folder: Path, wheel: Path) -> Path:
    """A new environment with the wheel installed and this interpreter's packages visible behind its
    own; returns its bin folder."""
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    inner = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(inner) / "outer-packages.pth").write_text("".join(f"{p}\n" for p in outer))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
    )
    return folder / "bin"


def test_a_wheel_installs_migrates_and_serves(tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "venv", build_wheel(tmp_path))
    outside = tmp_path / "elsewhere"  # the working folder: not the repository
    outside.mkdir()
    env = server_env(tmp_path / "data", SPK_TORCH_THREADS="1")
    env.pop("PYTHONPATH", None)

    def run(*args: str) -> str:
        done = subprocess.run(
            args, cwd=outside, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    # Imported from the installed package, which holds every file of the source tree (modules, the
    # console, the realtime .proto and type stubs).
    found = json.loads(
        run(
            str(bin_dir / "python"),
            "-c",
            "import json, pathlib, service; "
            "root = pathlib.Path(service.__file__).parent; "
            "print(json.dumps([str(root), sorted(str(p.relative_to(root)) for p in root.rglob('*') "
            "if p.is_file() and '__pycache__' not in p.parts)]))",
        )
    )
    installed_root, installed_files = Path(found[0]), set(found[1])
    assert installed_root.is_relative_to(tmp_path / "venv"), installed_root
    source_files = {
        str(p.relative_to(REPO_ROOT / "service"))
        for p in (REPO_ROOT / "service").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert source_files <= installed_files, sorted(source_files - installed_files)
    assert (installed_root / "_migrations" / "env.py").is_file()
    assert (installed_root / "_models" / "manifest.toml").is_file()
    console = {p.name for p in (REPO_ROOT / "service" / "console" / "static").iterdir()}
    assert console <= {p.name for p in (installed_root / "console" / "static").iterdir()}

    speakerid = str(bin_dir / "speakerid")
    assert "latest migration" in run(speakerid, "migrate")
    key = run(speakerid, "keys", "create", "--tenant", "acme").strip().splitlines()[-1]
    server = ServerProcess(env, tmp_path, command=[speakerid], cwd=outside)
    server.start()
    try:
        server.wait_ready(within_s=300)
        answer = httpx.post(
            f"{server.url}/audio/generic/api/v1/sync/diarization/enroll",
            params={"apikey": key},
            json=flac_body(CLIP, "alice"),
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        listed = httpx.get(f"{server.url}/v1/speakers/alice", headers={"X-API-Key": key}, timeout=30)
        assert listed.status_code == 200 and listed.json()["samples"] == 1
        assert httpx.get(f"{server.url}/console/console.js", timeout=30).status_code == 200
    finally:
        server.stop()
