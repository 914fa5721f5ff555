"""The driver's phase log: a start line, heartbeats while a phase runs, its duration."""

from __future__ import annotations

import logging
import time

import pytest

from neva_sweep.sweep.phases import phase


def test_phase_logs_start_heartbeats_and_duration(caplog):
    with caplog.at_level(logging.INFO, logger="neva_sweep.sweep"):
        with phase("statistics of tiny", every=0.05):
            time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "statistics of tiny ..."
    assert sum("statistics of tiny: still running" in ln for ln in lines) >= 2
    assert lines[-1].startswith("statistics of tiny: done in 0.")


def test_a_failed_phase_says_so_and_the_heartbeat_stops(caplog):
    with caplog.at_level(logging.INFO, logger="neva_sweep.sweep"):
        with pytest.raises(RuntimeError), phase("loading", every=0.05):
            raise RuntimeError("boom")
        n = len(caplog.records)
        time.sleep(0.2)
    assert caplog.records[-1].getMessage().startswith("loading: stopped after")
    assert len(caplog.records) == n  # no heartbeat after the phase ended
