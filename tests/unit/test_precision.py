"""Which precision the core runs in: explicit choices stand, ``auto`` follows the hardware."""

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
