"""Data the service ships beside its code: the Alembic migrations and the model manifest.

The repository keeps them in its top-level `migrations/` and `models/` folders; a wheel carries them
inside the package as `service/_migrations` and `service/_models` (pyproject's package-dir). They
are looked up in the installed package first, then in the source tree the package was imported
from (an editable install, or a checkout on PYTHONPATH).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from service.errors import StartupError


def shipped(name: str) -> Path:
    """The folder of shipped data `name` ("migrations" or "models"), as a real directory."""
    installed = resources.files("service") / f"_{name}"
    if installed.is_dir():
        return Path(str(installed))
    checkout = Path(str(resources.files("service"))).parent / name
    if checkout.is_dir():
        return checkout
    raise StartupError(f"The installation lacks its {name} folder (service/_{name}): reinstall speakerid")


def migrations() -> Path:
    return shipped("migrations")


def model_manifest() -> Path:
    return shipped("models") / "manifest.toml"
