"""The operator's command line, run as operators run it: `speakerid ...` in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.storage.repository import SqlStore
from tests.conftest import LiveServer, flac_body, needs_speech

# Each run starts a Python that imports torch: seconds per command.
pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "service.cli"]


def run(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPK_DATA_DIR": str(data_dir), "SPK_DATABASE_URL": ""}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300, check=check)


def test_keys_lifecycle_and_first_key(tmp_path: Path) -> None:
    refused = run(tmp_path, "keys", "list", check=False)
    assert refused.returncode == 2 and "speakerid migrate" in refused.stderr
    assert "latest migration" in run(tmp_path, "migrate").stdout
    first = run(tmp_path, "keys", "ensure", "--tenant", "default").stdout.strip().splitlines()
    assert first[-1].startswith("sk_")
    assert "exists" in run(tmp_path, "keys", "ensure").stdout  # no second key while one is active
    created = run(tmp_path, "keys", "create", "--tenant", "acme").stdout.strip().splitlines()
    key_id = created[0].split()[2]
    listed = run(tmp_path, "keys", "list").stdout
    assert key_id in listed and "acme" in listed and "default" in listed
    assert created[-1] not in listed  # the secret is shown once, never listed
    assert run(tmp_path, "keys", "revoke", key_id).returncode == 0
    assert f"{key_id}\tacme\trevoked" in run(tmp_path, "keys", "list").stdout
    assert run(tmp_path, "keys", "revoke", "key_nope", check=False).returncode == 1


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port free now (serve binds before it checks the database)
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    answer = run(tmp_path, "serve", "--host", "127.0.0.1", "--port", port, check=False)
    assert answer.returncode == 2
    assert "speakerid migrate" in answer.stderr


def test_serve_on_a_port_in_use_says_so_before_loading_the_model(tmp_path: Path) -> None:
    run(tmp_path, "migrate")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        answer = run(tmp_path, "serve", "--host", "127.0.0.1", "--port", port, check=False)
    assert answer.returncode == 3, answer.stderr
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in answer.stderr
    assert "model loaded" not in answer.stdout + answer.stderr  # found before the model's load


@needs_speech
@pytest.mark.model
def test_rebuild_index_recomputes_speakers_after_a_threshold_change(tmp_path: Path, live: LiveServer) -> None:
    with live.client(SqlStore(live.services.runtime.engine).create_key("acme")[1]) as client:
        for path in (
            "librispeech/test-other/367/367-130732-0002.flac",
            "librispeech/test-other/367/367-130732-0003.flac",
            "librispeech/test-other/367/367-130732-0005.flac",
        ):
            assert client.post("/v1/speakers/alice/enrollments", json=flac_body(path)).status_code == 201
        assert client.get("/v1/speakers/alice").json()["status"] == "complete"
        url = live.settings.resolved_database_url()
        env = {**os.environ, "SPK_DATABASE_URL": url, "SPK_ENROLLMENT__MIN_SAMPLES": "4"}
        done = subprocess.run([*CLI, "rebuild-index"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "recomputed 1 speakers" in done.stdout
        # The running server follows the change log: the status is re-derived under the new rule.
        assert client.get("/v1/speakers/alice").json()["status"] == "enrolling"


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"SPK_DEVICE": "tpu"}, "error: SPK_DEVICE: Input should be 'auto', 'cpu' or 'cuda'"),
        ({"SPK_AUDIO__VAD_THRESHOLD": "7"}, "error: SPK_AUDIO__VAD_THRESHOLD: Input should be less than 1"),
        ({"SPK_LOG_LEVEL": "loud"}, "error: SPK_LOG_LEVEL: Input should be"),
        ({"SPK_AUDIO": "{bad"}, 'error: error parsing value for field "audio"'),
        ({"SPK_DATABASE_URL": "garbage"}, "error: SPK_DATABASE_URL is not a database URL"),
        ({"SPK_DATABASE_URL": "mysql://u@localhost/db"}, "error: No driver for the database URL's kind"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path, env: dict[str, str], said: str) -> None:
    done = subprocess.run(
        [*CLI, "keys", "list"],
        env={**os.environ, "SPK_DATA_DIR": str(tmp_path), "SPK_DATABASE_URL": "", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stderr.splitlines() if not line.startswith("warning: ")]
    assert done.returncode == 2 and errors and errors[0].startswith(said), done.stderr
    assert "Traceback" not in done.stderr


def test_a_mistyped_setting_is_named_and_a_missing_database_is_not_made(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo' / 'speakerid.db'}"
    env = {**os.environ, "SPK_DATABASE_URL": url, "SPK_AUDIO__MAX_SECOND": "10"}
    done = subprocess.run([*CLI, "keys", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "run `speakerid migrate` first" in done.stderr
    assert "warning: SPK_AUDIO__MAX_SECOND is not a setting of the service" in done.stderr
    assert not (tmp_path / "typo").exists()  # a read-only command creates nothing


def test_a_tenant_name_is_printable_and_fits_the_database(tmp_path: Path) -> None:
    run(tmp_path, "migrate")
    for bad in ("", " padded", "x" * 129, "tab\there"):
        refused = run(tmp_path, "keys", "create", "--tenant", bad, check=False)
        assert refused.returncode == 2 and "1 to 128 printable characters" in refused.stderr
    assert run(tmp_path, "keys", "create", "--tenant", "x" * 128).returncode == 0
