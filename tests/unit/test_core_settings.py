"""How the core is set up: its precision (explicit, or auto by hardware) and its torch threads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.embedding import ecapa
from service.embedding.ecapa import native_bf16, native_int8, pick_precision, precision_candidates
from service.errors import StartupError


def test_explicit_precisions_stand_and_auto_follows_the_hardware() -> None:
    cpu = torch.device("cpu")
    for name in ("fp32", "bf16", "fused-fp32", "fused-bf16", "fused-int8"):
        assert precision_candidates(name, cpu) == [name]
    with open("/proc/cpuinfo") as fh:
        flags = fh.read()
    assert native_bf16(cpu) == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert native_int8(cpu) == any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    auto = precision_candidates("auto", cpu)
    # Fastest first, down to fp32, which needs no check; nothing the hardware lacks.
    assert auto[-2:] == ["fused-fp32", "fp32"]
    assert ("fused-int8" in auto) == native_int8(cpu)
    assert ("fused-bf16" in auto) == ("bf16" in auto) == native_bf16(cpu)
    assert pick_precision("auto", cpu) == auto[0]
    with pytest.raises(StartupError, match="precision"):
        pick_precision("fp8", cpu)


def test_a_gpu_compiles_only_where_triton_finds_a_c_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """triton builds its launcher with `CC`, else gcc or clang: an image without one (the slim
    Python base) must not try torch.compile and fail at start-up."""
    pytest.importorskip("triton")
    cuda = torch.device("cuda")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not ecapa.compiler_available(cuda)
    compiler = tmp_path / "clang"
    compiler.write_text("#!/bin/sh\n")
    compiler.chmod(0o755)
    assert ecapa.compiler_available(cuda)
    monkeypatch.setenv("CC", "no-such-compiler")
    assert not ecapa.compiler_available(cuda)  # a CC that is not there is what triton would run


def test_threads_default_to_every_usable_core_even_after_silero_vad_is_imported() -> None:
    import silero_vad  # noqa: F401  (its import sets torch to one thread)

    from service.embedding.ecapa import configure_threads, usable_cores

    before = torch.get_num_threads()
    try:
        configure_threads(0)
        assert torch.get_num_threads() == usable_cores()
        configure_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "argv", [["--port", "70000"], ["--port", "0"], ["--port", "x"], ["--grpc-port", "-1"]]
)
def test_serve_refuses_a_port_out_of_range_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """As SPK_PORT does; uvloop would otherwise serve --port 70000 on port 4464."""
    from service.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["serve", *argv])
    assert stopped.value.code == 2
    assert "is not a port" in capsys.readouterr().err
