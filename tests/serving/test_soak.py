"""A short soak of a real server (vLLM's default multiprocess mode) on a tiny model: mixed
hogwild and plain traffic with disconnects and malformed requests, then nothing lost or
leaked (the plugin's per-group state read from the engine), a clean SIGTERM with requests in
flight and a restart (``benchmarks/serving/soak.py``; its longer runs are in the
README)."""

from __future__ import annotations


import pytest

from tests.helpers.engines import model_path

from benchmarks.serving import soak  # noqa: E402

pytestmark = pytest.mark.slow


def test_a_short_soak_loses_and_leaks_nothing(tmp_path):
    report = soak.main(["--model", model_path("llama"), "--minutes", "1", "--clients", "4", "--max-tokens", "64",
                        "--protocol-workers", "2", "--max-model-len", "1024", "--kv-gib", "0.0625",
                        "--out", str(tmp_path / "soak")])
    assert report["server_errors"] == 0, report["statuses"]
    assert report["malformed"] > 0 and report["malformed_400"] == report["malformed"], report["statuses"]
    assert report["disconnects"] > 0 and report["groups_completed"] > 0
    assert report["mismatches"] == 0, report["mismatch_samples"]
    assert report["health"] == 200 and report["kv_cache_usage_after"] == 0 and report["requests_left"] == 0
    assert report["rss_end_mib"] - report["rss_after_warmup_mib"] < 256
    assert report["plugin_state_empty"], report["plugin_state_after"]
    # SIGTERM reached the server with the burst's requests running, and no client hung.
    assert report["sigterm_requests_in_flight"] > 0 and report["sigterm_burst_ended"]
    assert report["sigterm_clean"] and report["sigterm_exit_seconds"] < 20 and report["served_after_restart"]
