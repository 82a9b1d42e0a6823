"""The bench (`python -m scripts.bench`) end to end at the smallest sizes: the shape and sanity of
what it reports.

Timings are never asserted (they depend on the machine); counts, ranges and agreement are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, get_args

import pytest
import torch

from devtools.sets import EVAL_SPEECH, REPO_ROOT
from service.embedding.ecapa import Precision
from tests.conftest import needs_speech

pytestmark = [needs_speech, pytest.mark.model]

Report = tuple[dict[str, Any], str]  # the JSON written, and what was printed

CLIPS, EER_CLIPS, CLIENTS, REQUESTS, INDEX = 2, 4, (1, 2), 2, 1000


def positive(*values: object) -> bool:
    return all(isinstance(v, int | float) and v > 0 for v in values)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = [
        *("--speech", str(EVAL_SPEECH), "--json", str(out), "--threads", "2"),
        *("--clips", str(CLIPS), "--rounds", "1", "--eer-clips", str(EER_CLIPS)),
        *("--clients", *map(str, CLIENTS), "--requests", str(REQUESTS), "--client-procs", "2"),
        *("--index-sizes", str(INDEX), "--index-queries", "10"),
        *("--gpu-seconds", "1", "--gpu-max-batch", "4", "--gpu-in-flight", "8"),
        *("--gpu-clips", "4", "--gpu-sequential", "2"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPK_")}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_core_times_every_precision_against_speechbrain(report: Report) -> None:
    core = report[0]["core"]
    assert core["threads"] == 2 and len(core["clips"]) == CLIPS
    assert all(9.0 <= c["seconds"] <= 11.0 for c in core["clips"])
    by_name = {c["name"]: c for c in core["contenders"]}
    assert set(by_name) == {"speechbrain", *get_args(Precision)}
    for c in by_name.values():
        assert c["calls"] == CLIPS
        assert positive(c["ms_p50"], c["clips_per_s"], c["speedup_vs_speechbrain"])
    # The same model: speechbrain's vectors and ours agree; bf16 stays close to fp32.
    assert by_name["speechbrain"]["min_cos_vs_fp32"] > 0.999
    assert by_name["fp32"]["min_cos_vs_fp32"] == pytest.approx(1.0, abs=1e-6)
    assert by_name["fused-fp32"]["min_cos_vs_fp32"] == pytest.approx(1.0, abs=1e-5)
    for name in ("bf16", "fused-bf16", "fused-int8"):
        assert 0.98 < by_name[name]["min_cos_vs_fp32"] <= 1.0 + 1e-6
    assert by_name["speechbrain"]["eer"] is None
    assert all(0.0 <= by_name[name]["eer"] <= 0.5 for name in get_args(Precision))
    pairs = core["eer_set"]
    assert pairs["clips"] == EER_CLIPS and pairs["speakers"] >= 2
    assert pairs["target_pairs"] + pairs["nontarget_pairs"] == EER_CLIPS * (EER_CLIPS - 1) // 2
    assert pairs["target_pairs"] > 0 and pairs["nontarget_pairs"] > 0


def test_enrollment_is_timed_against_the_bare_forward(report: Report) -> None:
    enroll = report[0]["enroll"]
    assert enroll["requests"] == CLIPS and enroll["errors"] == 0
    assert enroll["server"]["device"] == "cpu" and enroll["server"]["threads"] == 2
    assert enroll["server"]["precision"] in get_args(Precision)
    assert 0 < enroll["speech_seconds"] <= enroll["mean_seconds"]
    assert enroll["narrowband_twins"] is True  # the default: the speech and its twin in one call
    for row in ("end_to_end", "bare_forward", "enrollment_forward", "speechbrain"):
        assert positive(enroll[row]["ms_p50"], enroll[row]["enrollment_over_this"])
        assert enroll[row]["ms_p50"] <= enroll[row]["ms_p90"]
        assert positive(enroll[row]["cpu_ms_p50"], enroll[row]["enrollment_cpu_over_this"])
    assert enroll["end_to_end"]["enrollment_over_this"] == pytest.approx(1.0)
    assert enroll["end_to_end"]["enrollment_cpu_over_this"] == pytest.approx(1.0)
    assert positive(enroll["enrollment_over_forward"], enroll["speechbrain_over_enrollment"])
    # The server's own model time per request is part of the request, so the request is longer.
    assert enroll["server_model_ms_mean"] > 0 and enroll["enrollment_over_server_model"] > 1.0
    # Every step of the same enrollments in the bench process; "rest" is a difference of timings.
    steps = enroll["steps"]
    measured = ("body", "frontend", "band", "telephone", "fingerprint", "model", "enroll")
    assert set(steps) == {*measured, "rest"}
    assert all(positive(steps[name]["wall_ms"], steps[name]["cpu_ms"]) for name in measured)


def test_http_levels_count_every_request(report: Report) -> None:
    http = report[0]["http"]
    assert [level["clients"] for level in http["levels"]] == list(CLIENTS)
    for level in http["levels"]:
        assert level["requests"] == level["ok"] == level["clients"] * REQUESTS
        assert level["rate_limited"] == 0 and level["errors"] == 0 and level["error_kinds"] == {}
        assert positive(level["throughput_rps"], level["p50_ms"], level["seconds"])
        assert level["p50_ms"] <= level["p99_ms"]
    assert http["levels"][1]["client_processes"] == 2  # the load split over processes adds up
    assert http["levels"][0]["throughput_vs_first"] == pytest.approx(1.0)


def test_index_times_the_index_against_exact_search(report: Report) -> None:
    index = report[0]["index"]
    (row,) = index["rows"]
    assert row["speakers"] == INDEX and index["queries"] == 10
    assert positive(row["p50_ms"], row["exact_p50_ms"], row["speedup"])
    assert row["speedup"] == pytest.approx(row["exact_p50_ms"] / row["p50_ms"])
    assert 0.0 <= row["recall_at_1"] <= 1.0 and row["leaks"] == 0 and row["delete_errors"] == 0


# Per section: where the JSON holds the service's figure, the baseline's, and their ratio.
SIDES: dict[str, Any] = {
    "core": lambda r: [
        (c["ms_p50"], r["contenders"][0]["ms_p50"], c["speedup_vs_speechbrain"]) for c in r["contenders"]
    ],
    "enroll": lambda r: [
        (r["end_to_end"]["ms_p50"], r[side]["ms_p50"], r[side]["enrollment_over_this"])
        for side in ("bare_forward", "enrollment_forward", "speechbrain")
    ],
    "http": lambda r: [
        (lv["throughput_rps"], r["levels"][0]["throughput_rps"], lv["throughput_vs_first"])
        for lv in r["levels"]
    ],
    "index": lambda r: [(row["exact_p50_ms"], row["p50_ms"], row["speedup"]) for row in r["rows"]],
    "gpu": lambda r: [
        (g["clips_per_s"], g["sequential_clips_per_s"], g["vs_sequential"]) for g in r.get("runs", [])
    ],
}


def test_every_section_run_reports_both_sides_and_their_ratio(report: Report) -> None:
    results = report[0]
    assert results["run"]["sections"] == list(SIDES)
    for name in results["run"]["sections"]:
        if "skipped" in results[name]:
            assert name == "gpu" and not torch.cuda.is_available()
            continue
        triples = SIDES[name](results[name])
        assert triples, f"{name}: no figures"
        for ours, baseline, ratio in triples:
            assert positive(ours, baseline, ratio), (name, ours, baseline, ratio)
            # Each ratio is the quotient of the two sides as printed, in one direction or the other.
            assert ratio == pytest.approx(ours / baseline, rel=0.02) or ratio == pytest.approx(
                baseline / ours, rel=0.02
            ), (name, ours, baseline, ratio)


def test_gpu_section_and_targets_report_or_say_why_not(report: Report) -> None:
    results, stdout = report
    if torch.cuda.is_available():
        runs = results["gpu"]["runs"]
        assert runs and all(positive(r["clips_per_s"], r["sequential_clips_per_s"]) for r in runs)
        assert all(r["cos_vs_fp32_min"] > 0.98 for r in runs)
    else:
        assert results["gpu"] == {"skipped": "no CUDA device"}
        assert "gpu: skipped: no CUDA device" in stdout
    targets = results["targets"]
    assert len(targets) == 2 and all(t["figure"] for t in targets)
    assert targets[1]["met"] is None  # no 256-client level in this run
    assert stdout.count("target >=") == 2
