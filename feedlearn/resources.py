"""What a run used of the machine: its peak resident memory (benchmarks record it beside their figures)."""

from __future__ import annotations

import resource


def peak_rss_mb() -> int:
    """The peak resident memory, in MB, of this process or of the largest of its finished child processes
    (a benchmark's pool workers), whichever is larger (Linux reports both in KB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024)
