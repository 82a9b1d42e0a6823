"""The console's files as the service serves them, and the deployment files agreeing with each
other and with the service's own limits (no model, server or browser: see
tests/integration/test_console.py and test_scale_out.py for those)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from devtools.sets import REPO_ROOT
from devtools.topology import COMPOSE_REPLICAS, DEPLOY, MAX_BODY_BYTES, compose_nginx
from service.config import Settings
from service.console import STATIC
from service.main import create_app


def served(tmp_path: Path) -> TestClient:
    # Not entered as a context: the lifespan (model, database) is not needed for static files.
    return TestClient(create_app(Settings(data_dir=tmp_path)), follow_redirects=False)


def test_the_console_is_served_with_a_policy_that_allows_only_its_own_origin(tmp_path: Path) -> None:
    http = served(tmp_path)
    assert http.get("/console").headers["location"].endswith("/console/")
    page = http.get("/console/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["permissions-policy"] == "microphone=(self)"
    # Everything the page loads is here, with a type the browser accepts under nosniff.
    # (downsampler.js: the AudioWorklet module the script loads for live identification.)
    for name in [*re.findall(r'(?:src|href)="([^"#]+)"', page.text), "downsampler.js"]:
        asset = http.get(f"/console/{name}")
        assert asset.status_code == 200, name
        expected = "javascript" if name.endswith(".js") else "css"
        assert expected in asset.headers["content-type"], (name, asset.headers["content-type"])
    # Nothing from elsewhere, and no inline script (the policy would block it).
    for path in STATIC.iterdir():
        assert "http://" not in path.read_text() and "https://" not in path.read_text(), path
    assert "<script>" not in page.text and not re.search(r"\son[a-z]+=", page.text)


def test_the_console_links_each_section_and_each_link_can_take_the_focus(tmp_path: Path) -> None:
    page = served(tmp_path).get("/console/").text
    # Keyboard users reach the forms from the header instead of tabbing through the speaker list.
    nav = page[page.index('<nav id="sections"') : page.index("</nav>")]
    targets = re.findall(r'href="#([a-z-]+)"', nav)
    assert {"speakers", "enroll", "identify", "verify", "live"} <= set(targets), targets
    for target in targets:
        assert re.search(rf'<section id="{target}"[^>]* tabindex="-1"', page), target
    # The list is a page at a time, with a labelled search box and its pager.
    assert '<label for="speaker-search">' in page and 'id="speaker-search"' in page
    assert 'id="page-previous"' in page and 'id="page-next"' in page


def test_the_console_policy_stays_off_the_api(tmp_path: Path) -> None:
    answer = served(tmp_path).get("/healthz")
    assert "content-security-policy" not in answer.headers
    assert answer.headers["cache-control"] == "no-store"


def test_the_committed_nginx_conf_is_the_template_rendered_for_compose() -> None:
    assert (DEPLOY / "nginx.conf").read_text() == compose_nginx()


def test_compose_runs_postgres_two_health_checked_replicas_and_nginx_with_the_services_body_limit() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    replicas = [name.split(":")[0] for name in COMPOSE_REPLICAS]
    assert set(replicas) | {"postgres", "nginx"} <= set(services)
    for name in replicas:
        service = services[name]
        assert "postgres" in service["environment"]["SPK_DATABASE_URL"]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert int(service["environment"]["SPK_AUDIO__MAX_REQUEST_BYTES"]) == MAX_BODY_BYTES
        assert services["nginx"]["depends_on"][name] == {"condition": "service_healthy", "restart": True}
        # The realtime stream too: each replica serves gRPC, nginx passes it on, on the port the
        # README and the images name.
        assert service["command"][-2:] == ["--grpc-port", "50051"]
        assert f"{name}:50051" in compose_nginx()
        # Longer than the server's own graceful shutdown (10 s), so Docker does not cut it short.
        assert int(service["stop_grace_period"].removesuffix("s")) > 10
    assert any(port.endswith(":50051") for port in services["nginx"]["ports"])
    assert "grpc_pass grpc://speakerid_grpc;" in compose_nginx()
    assert f"client_max_body_size {MAX_BODY_BYTES};" in compose_nginx()
    assert Settings().audio.max_request_bytes == MAX_BODY_BYTES
    assert (REPO_ROOT / "Dockerfile.cuda").is_file()


def _sent_to_docker(top_level: str) -> bool:
    """Whether .dockerignore lets a top-level file or folder into the build context (its last
    matching line decides, as Docker reads it)."""
    sent = True
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        if fnmatch.fnmatch(top_level, line.lstrip("!").rstrip("/")):
            sent = keep
    return sent


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_each_image_gets_what_it_copies_and_serves_both_ports(dockerfile: str) -> None:
    text = (REPO_ROOT / dockerfile).read_text()
    copied = {
        source.rstrip("/").split("/")[0]
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    assert copied and all(_sent_to_docker(name) for name in copied), copied
    assert not any(_sent_to_docker(name) for name in (".venv", ".git", "data", "tests"))
    assert "EXPOSE 8000 50051" in text and "serve --grpc-port 50051" in text  # as the README says
    # The server runs as a user of its own, set after the last step that needs root.
    lines = [line.split()[0] for line in text.splitlines() if line and not line.startswith(("#", " "))]
    last_run = max(i for i, word in enumerate(lines) if word == "RUN")
    assert "USER speakerid" in text and lines.index("USER") > last_run
    assert "chown speakerid:speakerid /app/data" in text
