"""Errors that repeat on the data path are logged once in full, then counted (netstack.ratelog)."""

from __future__ import annotations

import doctest
import logging

import netstack.ratelog
from netstack.runtime import Runtime


def test_doctest():
    assert doctest.testmod(netstack.ratelog).failed == 0


class Broken:
    """An interface whose poll fails as a frame hook that raises would make it fail."""

    def poll(self, now, device, sockets):
        raise BrokenPipeError(32, "Broken pipe")

    def poll_at(self, now, sockets):
        return None


def test_a_poll_that_fails_every_time_logs_one_traceback_then_counts(caplog):
    rt = Runtime(Broken(), device=object())
    with caplog.at_level(logging.ERROR, logger="netstack.runtime"):
        for i in range(10_000):
            rt.poll(float(i) / 1000)
    records = [r for r in caplog.records if "interface poll failed" in r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info is not None  # the first one with its traceback
    assert rt.stats["poll_errors"] == 10_000
    assert rt._errlog.suppressed == 9_999
