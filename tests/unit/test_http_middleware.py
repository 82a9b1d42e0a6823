"""The HTTP layer around the routes, on the app without its lifespan (no model or database):
HEAD answered as GET, and request metrics labelled by route template and a bounded set of methods."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.api.middleware import REQUESTS
from service.config import Settings
from service.main import create_app


def counted(method: str, route: str, status: str) -> float:
    return float(REQUESTS.labels(method, route, status)._value.get())


def test_head_is_counted_under_its_route_and_odd_methods_share_one_label(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    before = counted("HEAD", "/healthz", "200"), counted("other", "/healthz", "405")
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    assert client.request("PROPFIND", "/healthz").status_code == 405
    assert counted("HEAD", "/healthz", "200") == before[0] + 1  # not "unmatched"
    assert counted("other", "/healthz", "405") == before[1] + 1  # not a series per method
    labels = {tuple(s.labels.values()) for metric in REQUESTS.collect() for s in metric.samples}
    assert not any("PROPFIND" in label for label in labels)


def test_the_docs_pages_may_not_be_framed(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    for page in ("/docs", "/redoc"):
        answer = client.get(page)
        assert answer.status_code == 200
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert answer.headers["x-frame-options"] == "DENY"
