"""Peak memory: the process's own, or a finished child's when that is larger."""

from __future__ import annotations

import resource
from types import SimpleNamespace

from feedlearn import resources
from feedlearn.resources import peak_rss_mb


def test_the_peak_is_the_larger_of_the_process_and_its_largest_child(monkeypatch):
    kb = {resource.RUSAGE_SELF: 300 * 1024, resource.RUSAGE_CHILDREN: 1200 * 1024}
    monkeypatch.setattr(resources.resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=kb[who]))
    assert peak_rss_mb() == 1200
    kb[resource.RUSAGE_CHILDREN] = 0  # no child has finished
    assert peak_rss_mb() == 300


def test_this_process_has_a_peak():
    assert peak_rss_mb() > 10  # a Python interpreter alone holds more than 10 MB
