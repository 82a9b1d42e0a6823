"""The realtime service's protocol is the official client's: the same package, messages, field
names, numbers and types, and the same methods (read from the client's generated module)."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from service.realtime import deepaffects_realtime_pb2 as ours

REPO = Path(__file__).resolve().parents[2]


def _client_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The client's serialized descriptor, read from its source: its module needs protobuf's pure
    Python implementation to import (it predates protobuf 4)."""
    spec = importlib.util.find_spec("deepaffects")
    assert spec is not None and spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations)), "realtime", "deepaffects_realtime_pb2.py")
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "serialized_pb":
            assert isinstance(node.value, ast.Call)
            text = ast.literal_eval(node.value.args[0])
            return descriptor_pb2.FileDescriptorProto.FromString(text.encode("latin1"))
    raise AssertionError("no serialized_pb in the client's module")


def _shape(proto: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    return {
        "package": proto.package,
        "messages": {
            m.name: sorted((f.name, f.number, f.type, f.label) for f in m.field) for m in proto.message_type
        },
        "services": {
            s.name: sorted(
                (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                for m in s.method
            )
            for s in proto.service
        },
    }


def test_messages_and_methods_match_the_official_client() -> None:
    mine = descriptor_pb2.FileDescriptorProto.FromString(ours.DESCRIPTOR.serialized_pb)
    client = _client_descriptor()
    assert _shape(mine) == _shape(client)
    assert "IdentifySpeaker" in str(_shape(mine)["services"])


def test_the_clients_realtime_helpers_import_beside_our_grpcio() -> None:
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "PYTHONPATH": str(REPO)}
    code = (
        "from deepaffects.realtime.util import get_deepaffects_client, chunk_generator_from_file\n"
        "from deepaffects.realtime.types import segment_chunk\n"
        "client = get_deepaffects_client('127.0.0.1:1')\n"
        "print(type(client).__name__, segment_chunk('', duration=3).sampleRate)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["DeepAffectsRealtimeStub", "8000"]
