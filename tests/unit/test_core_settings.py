"""How the core is set up: its precision (explicit, or auto by hardware) and its torch threads."""

from __future__ import annotations

import pytest
import torch

from service.embedding.ecapa import native_bf16, pick_precision
from service.errors import StartupError


def test_explicit_precisions_stand_and_auto_follows_the_hardware() -> None:
    cpu = torch.device("cpu")
    assert pick_precision("fp32", cpu) == "fp32"
    assert pick_precision("bf16", cpu) == "bf16"
    assert pick_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    with open("/proc/cpuinfo") as fh:
        assert native_bf16(cpu) == ("avx512_bf16" in (flags := fh.read()) or "amx_bf16" in flags)
    with pytest.raises(StartupError, match="precision"):
        pick_precision("fp8", cpu)


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
