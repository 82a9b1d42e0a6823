"""Kill the server with SIGKILL under load and check every acknowledged write survived (see
devtools/crash.py).

    .venv/bin/python -m scripts.crash_test [--help]
"""

from devtools.crash import main

if __name__ == "__main__":
    raise SystemExit(main())
