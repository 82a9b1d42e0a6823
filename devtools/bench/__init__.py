"""The bench: the service against its baselines, one module per section (core, enroll, http,
index, gpu), run together by `runner` (`python -m scripts.bench`)."""
