"""Answer extraction, gold parsing and math_verify comparison: correctness, safety, time and memory bounds."""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time

import pytest

from feedlearn.verifiers import math_answers as ma
from feedlearn.verifiers.math_answers import (
    answers_match,
    extract_boxed,
    gsm8k_gold,
    math_gold,
    score_answer,
)

# --- extract_boxed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"The answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left( 1, \frac{2}{3} \right)}", r"\left( 1, \frac{2}{3} \right)"),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", "3"),
        (r"$\boxed{ 7 }$", "7"),
        (r"\boxed {7}", "7"),
        (r"\boxed 5", "5"),
        (r"so \boxed 5$ is it", "5"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are content, not grouping
        (r"\boxed{\}}", r"\}"),
        (r"\boxed{\boxed{3}}", "3"),  # the last \boxed wins, as in the MATH reference code
        ("no answer here", None),
        ("", None),
        (r"\boxed{}", None),  # an empty box is no answer
        (r"\boxed{   }", None),
        (r"\boxed{1", None),  # never closed
        (r"\boxed{1} and then \boxed{", None),  # only the last box counts, and it is cut off
        ("\\boxed", None),
        ("\\boxed   ", None),
        (r"\boxedfoo{3}", None),  # another macro
        ("\\boxed{\x00}", "\x00"),
        ("\\boxed{é😀}", "é😀"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" + "{" * 1_000_000,
        "\\boxed{" + "{}" * 500_000,
        "\\boxed{" * 10_000,
        "\\boxed{" * 10_000 + "1" + "}" * 10_000,
        "\\boxed{" + "\\" * 1_000_001 + "}",
        "\x00" * 1_000_000 + "\\boxed{1}",
        "word " * 200_000 + "\\boxed{42}",
        "\\boxed" + " " * 1_000_000 + "5",
        "\\boxed{" + "é😀" * 300_000 + "}",
        "{" * 1_000_000,
    ],
)
def test_extract_boxed_hostile_inputs_are_fast(text):
    start = time.monotonic()
    extract_boxed(text)
    assert time.monotonic() - start < 1.0


def test_extract_boxed_rejects_non_strings():
    assert extract_boxed(None) is None  # type: ignore[arg-type]


# --- gold answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "gold"),
    [
        ("She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7", "7"),
        ("#### 1,234,567", "1234567"),
        ("It costs 2 dollars.\n####   -5  ", "-5"),
        ("a #### b\n#### 12", "12"),  # the last marker counts
        ("#### 0.5", "0.5"),
    ],
)
def test_gsm8k_gold(field, gold):
    assert gsm8k_gold(field) == gold


@pytest.mark.parametrize("field", ["The answer is 7.", "", "#### ", "####"])
def test_gsm8k_gold_without_answer_raises(field):
    with pytest.raises(ValueError):
        gsm8k_gold(field)


def test_math_gold():
    solution = r"We get $x = \boxed{2}$ first, so the total is $\boxed{\frac{\sqrt{3}}{2}}$."
    assert math_gold(solution) == r"\frac{\sqrt{3}}{2}"


@pytest.mark.parametrize("solution", ["The answer is 2.", r"\boxed{", r"\boxed{}"])
def test_math_gold_without_box_raises(solution):
    with pytest.raises(ValueError):
        math_gold(solution)


# --- answers_match: what math_verify accepts -------------------------------------------------------------

# (predicted, gold) pairs math_verify 0.9 judges equal. This documents its behaviour; it is not a spec.
EQUIVALENT = [
    ("0.5", r"\frac{1}{2}"),
    (r"\frac12", "0.5"),
    ("1/2", r"\frac{1}{2}"),
    (r"\dfrac{1}{2}", r"\frac{1}{2}"),
    (r"\frac{2}{4}", r"\frac{1}{2}"),
    ("0.50", "0.5"),
    ("1.5", "3/2"),
    ("2", "2.0"),
    ("-3", "-3.0"),
    ("-0.5", r"-\frac{1}{2}"),
    (r"-\frac{1}{2}", r"\frac{-1}{2}"),
    ("1,000", "1000"),  # thousands separators
    ("1000", "1,000"),
    ("1,234,567", "1234567"),
    ("1{,}000", "1000"),
    (r"\left( 1, 2 \right)", "(1,2)"),
    (r"10\%", "10"),  # a percent matches both the bare number ...
    ("10%", "10"),
    ("0.1", r"10\%"),  # ... and its fraction
    ("10", r"10\%"),
    ("5 cm", "5"),  # a trailing unit word is dropped
    (r"5\text{ cm}", "5"),
    (r"\$5", "5"),
    ("$5", "5"),
    (r"90^{\circ}", "90"),
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
    ("x+1", "1+x"),
    ("x=3", "3"),
    (r"\{1,2\}", r"\{2,1\}"),
    (r"\text{(A)}", "A"),
    ("0.3333333", r"\frac13"),  # floats are compared after rounding to 6 places
    ("1,2", "(1,2)"),  # "1,2" is read as a collection, not as 12
    ("1 000", "1000"),  # equal once spaces are removed (checked before math_verify, which says no)
]

# (predicted, gold) pairs it judges different.
DIFFERENT = [
    ("3", "-3"),
    ("2", "3"),
    ("x+1", "x-1"),
    ("0.333", r"\frac13"),  # too few digits
    ("3.14", r"\pi"),
    ("(2,1)", "(1,2)"),  # order matters in tuples
    ("1,2", "12"),
    ("1e3", "1000"),  # e is Euler's number
    ("5 dollars", "5"),  # several words are not dropped as a unit
    ("", "5"),
    ("   ", "5"),
    ("5", ""),
    ("hello", "5"),
    ("}{", "5"),
]


@pytest.mark.parametrize(("predicted", "gold"), EQUIVALENT)
def test_answers_match_equivalent_forms(predicted, gold):
    assert answers_match(predicted, gold) is True


@pytest.mark.parametrize(("predicted", "gold"), DIFFERENT)
def test_answers_match_different_forms(predicted, gold):
    assert answers_match(predicted, gold) is False


def test_answers_match_non_strings_are_false():
    assert answers_match(None, "5") is False  # type: ignore[arg-type]
    assert answers_match(5, "5") is False  # type: ignore[arg-type]
    assert answers_match("5", None) is False  # type: ignore[arg-type]


def test_answers_match_never_executes_the_prediction(tmp_path):
    marker = tmp_path / "hacked"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w').write('x')",
        f"exec(\"open('{marker}', 'w')\")",
        "__import__('os').system('echo hacked')",
    ]
    for payload in payloads:
        assert answers_match(payload, "0") is False
        assert score_answer(f"\\boxed{{{payload}}}", "0") == (0.0, payload)
    assert not marker.exists()


def test_answers_match_huge_prediction_is_false_fast():
    start = time.monotonic()
    assert answers_match("1" * 1_000_000, "1") is False
    assert answers_match("{" * 1_000_000, "1") is False
    assert answers_match("1" * (ma.MAX_ANSWER_CHARS + 1), "1" * (ma.MAX_ANSWER_CHARS + 1)) is False
    assert time.monotonic() - start < 1.0


def test_answers_match_costly_short_input_is_cut_off():
    answers_match("1", "2")  # import math_verify outside the timed part
    start = time.monotonic()
    assert answers_match("9^{9^{9^{9}}}", "5", timeout_s=0.3) is False  # minutes of sympy work otherwise
    assert time.monotonic() - start < 1.5


def test_answers_match_leaves_the_callers_alarm_alone():
    fired = []
    old_handler = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert answers_match("0.5", r"\frac{1}{2}") is True
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 20.0 < remaining <= 30.0
        assert signal.getsignal(signal.SIGALRM) is not ma._raise_out_of_time
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
    assert fired == []


# --- every comparison in a helper process, bounded in time and memory ----------------------------------

# `(2^{10000000})!`: sympy computes ever larger integers, about 250 MB more a second, until stopped.
HOSTILE = "(2^{10000000})!"


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB on Linux


def _proc_status(pid: int, field: str) -> int:
    """A `Vm...` field of /proc/<pid>/status, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _address_space_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max address space"):
                return int(line.split()[3])  # the soft limit, in bytes
    raise AssertionError(f"no address-space limit in /proc/{pid}/limits")


def _idle_helper_pids() -> list[int]:
    with ma._helpers_lock:
        return [helper.proc.pid for helper in ma._idle_helpers]


def test_answers_match_never_compares_in_the_calling_process(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("compared in the calling process")

    for name in ("_match_with_timer", "_compare", "_load_math_verify"):
        monkeypatch.setattr(ma, name, forbidden)  # the helper loads its own copy of the module
    assert answers_match("0.5", r"\frac{1}{2}") is True
    assert answers_match("2", "3") is False
    assert _in_thread(answers_match, "1,000", "1000") is True


def test_hostile_input_does_not_grow_the_calling_process():
    answers_match("1", "2")  # a warm helper, so the timing below is the comparison's
    before = _peak_rss_bytes()
    start = time.monotonic()
    assert answers_match(HOSTILE, "5", timeout_s=1.0) is False  # in-process, this grew RSS by ~250 MB
    assert time.monotonic() - start < 3.0
    assert _peak_rss_bytes() - before < 100 << 20


def test_hostile_input_does_not_grow_the_calling_process_from_a_thread():
    _in_thread(answers_match, "1", "2")
    before = _peak_rss_bytes()
    start = time.monotonic()
    assert _in_thread(answers_match, HOSTILE, "5", timeout_s=1.0) is False
    assert time.monotonic() - start < 3.0
    assert _peak_rss_bytes() - before < 100 << 20


@pytest.fixture
def small_helper_headroom(monkeypatch):
    """Fresh helpers limited to 64 MiB above their ready size (they read the headroom from argv)."""
    ma._close_idle_helpers()
    monkeypatch.setattr(ma, "_HELPER_MEMORY_HEADROOM_BYTES", 64 << 20)
    yield 64 << 20
    ma._close_idle_helpers()  # later tests get helpers with the default headroom


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_helper_memory_limit_holds_and_the_helper_keeps_serving(small_helper_headroom):
    assert answers_match("x+1", "1+x") is True
    (pid,) = _idle_helper_pids()
    ready_peak = _proc_status(pid, "VmPeak")
    limit = _address_space_limit(pid)
    assert limit - ready_peak <= small_helper_headroom

    start = time.monotonic()
    assert answers_match(HOSTILE, "5", timeout_s=1.0) is False  # MemoryError inside math_verify: False
    assert time.monotonic() - start < 3.0
    peak = _proc_status(pid, "VmPeak")
    assert ready_peak + small_helper_headroom // 2 < peak <= limit  # it hit the limit, and the limit held

    assert _idle_helper_pids() == [pid]  # the same helper, still serving
    assert answers_match("0.5", r"\frac{1}{2}") is True
    assert answers_match(r"\sin^2 x + \cos^2 x", "1") is True
    assert answers_match("2", "3") is False
    assert _idle_helper_pids() == [pid]


def test_dead_helper_is_replaced():
    assert answers_match("2/4", "0.5") is True
    with ma._helpers_lock:
        helpers = list(ma._idle_helpers)
    for helper in helpers:  # as if killed by the kernel's OOM killer while idle
        helper.proc.kill()
        helper.proc.wait()
    assert answers_match("2/4", "0.5") is True
    assert not set(_idle_helper_pids()) & {helper.proc.pid for helper in helpers}


# --- answers_match from other threads ----------------------------------------------------------------------


def _in_thread(fn, *args, **kwargs):
    result: list = []
    errors: list = []

    def target():
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    return result[0]


def test_answers_match_in_worker_threads():
    assert _in_thread(answers_match, "0.5", r"\frac{1}{2}") is True
    assert _in_thread(answers_match, "1,000", "1000") is True
    assert _in_thread(answers_match, "3", "-3") is False
    assert _in_thread(score_answer, r"so \boxed{\dfrac{1}{2}}", "0.5") == (1.0, r"\dfrac{1}{2}")

    start = time.monotonic()
    assert _in_thread(answers_match, "9^{9^{9^{9}}}", "5", timeout_s=0.3) is False
    assert time.monotonic() - start < 1.5

    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda p=p: results.append(answers_match(p, "0.5")))
        for p in ["1/2", r"\frac{1}{2}", "0.50", "2"]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False, True, True, True]


def test_stuck_helper_is_killed_and_replaced(monkeypatch):
    monkeypatch.setattr(ma, "_HELPER_GRACE_S", 0.2)
    assert _in_thread(answers_match, "2/4", "0.5") is True
    with ma._helpers_lock:
        helpers = list(ma._idle_helpers)
    for helper in helpers:  # a helper that stops answering, as if stuck in C code its timer cannot interrupt
        helper.proc.send_signal(signal.SIGSTOP)
    start = time.monotonic()
    assert _in_thread(answers_match, "2/4", "0.5", timeout_s=0.2) is False
    assert time.monotonic() - start < 2.0
    assert any(helper.proc.poll() is not None for helper in helpers)  # the one asked was killed
    for helper in helpers:
        if helper.proc.poll() is None:
            helper.proc.send_signal(signal.SIGCONT)
    assert _in_thread(answers_match, "2/4", "0.5") is True  # a fresh helper answers


# --- score_answer ----------------------------------------------------------------------------------------


def test_score_answer_rewards():
    assert score_answer(r"2 + 2 = \boxed{4}", "4") == (1.0, "4")
    assert score_answer(r"half is \boxed{0.5}", r"\frac{1}{2}") == (1.0, "0.5")
    assert score_answer(r"\boxed{5}", "4") == (0.0, "5")
    assert score_answer("the answer is 4", "4") == (-1.0, None)
    assert score_answer(r"\boxed{}", "4") == (-1.0, None)
    assert score_answer(r"\boxed{4", "4") == (-1.0, None)


def test_score_answer_fast_path_skips_math_verify(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("math_verify was called")

    monkeypatch.setattr(ma, "_compare", forbidden)
    monkeypatch.setattr(ma, "_match_in_helper", forbidden)
    assert score_answer(r"\boxed{ 1 2 3 }", "123") == (1.0, "1 2 3")
    assert score_answer(r"\boxed{-7}", " -7 ") == (1.0, "-7")


def test_a_grader_failure_is_wrong_counted_and_logged_once(monkeypatch, caplog):
    """math_verify raising inside the helper is a False verdict, counted, and said once with the reason
    (before, any exception was silently a wrong answer)."""
    ma._close_idle_helpers()
    failing = ma._HELPER_CODE.replace(
        "module._helper_main(",
        "real = module._compare\n"
        "def _compare(p, g):\n"
        "    if p == 'boom':\n"
        "        raise RuntimeError('parser broke')\n"
        "    return real(p, g)\n"
        "module._compare = _compare\n"
        "module._helper_main(",
    )
    monkeypatch.setattr(ma, "_HELPER_CODE", failing)
    before = ma.grader_failures()
    try:
        with caplog.at_level("WARNING", logger="feedlearn.verifiers.math_answers"):
            assert ma.answers_match("boom", "1") is False
            assert ma.answers_match("boom", "2") is False
            assert ma.answers_match("1/2", "0.5") is True
    finally:
        ma._close_idle_helpers()
    assert ma.grader_failures() - before == 2
    said = [r.getMessage() for r in caplog.records if "math_verify failed" in r.getMessage()]
    assert len(said) == (1 if before == 0 else 0)
    if said:
        assert "RuntimeError: parser broke" in said[0]
