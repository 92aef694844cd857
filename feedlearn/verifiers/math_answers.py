"""Final answers of math problems: extract the boxed answer from model output, compare it with the gold.

Model output is data: nothing here evaluates it as code. Comparison is done by the `math_verify` library,
which parses LaTeX into sympy (never `eval`), in a helper process bounded in time and memory, from any thread.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# Longest predicted answer (after extraction) that is handed to math_verify; longer is judged wrong.
MAX_ANSWER_CHARS = 1000

# A `\` with the character it escapes (so `\{`, `\}` and `\\` are not braces), or a group brace.
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
_BOXED = "\\boxed"


def extract_boxed(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` in `text`, stripped; None if there is none.

    Braces are balanced, so `\boxed{\frac{1}{2}}` gives `\frac{1}{2}`; escaped braces `\{ \}` are content,
    not grouping. `\boxed 5` (a single token after a space, ending at a space or `$`) gives `5`. As in the
    MATH benchmark's reference code, only the last `\boxed` counts: if it is never closed (say, output cut
    off mid-answer) the result is None, even when an earlier box was complete. An empty box is None too.
    Runs in linear time: one `rfind` and one regex scan with no backtracking, whatever the input.
    """
    if not isinstance(text, str):
        return None
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    pos = start + len(_BOXED)
    if pos < len(text) and text[pos].isascii() and text[pos].isalpha():
        return None  # another macro, e.g. \boxedfoo
    after = len(text) - len(text[pos:].lstrip())  # index of the first non-space after \boxed
    if after < len(text) and text[after] == "{":
        depth = 0
        for m in _BRACE_OR_ESCAPE.finditer(text, after):
            token = m.group()
            if token == "{":
                depth += 1
            elif token == "}":
                depth -= 1
                if depth == 0:
                    content = text[after + 1 : m.start()].strip()
                    return content or None
        return None  # unbalanced: the box is never closed
    if after == len(text):
        return None  # `\boxed` at the very end
    token = text[after:].split(None, 1)[0].split("$", 1)[0]
    return token or None


def gsm8k_gold(answer_field: str) -> str:
    """The gold answer of a GSM8K `answer` field: the text after the last `####`, commas removed, trimmed.

    Raises ValueError if there is no `####` or nothing after it.
    """
    if "####" not in answer_field:
        raise ValueError("no '####' marks the final answer")
    gold = answer_field.rsplit("####", 1)[1].replace(",", "").strip()
    if not gold:
        raise ValueError("nothing follows '####'")
    return gold


def math_gold(solution: str) -> str:
    r"""The gold answer of a MATH solution: the content of its last `\boxed{}`. ValueError if it has none."""
    gold = extract_boxed(solution)
    if gold is None:
        raise ValueError("the solution has no complete \\boxed{} answer")
    return gold


def _squash(s: str) -> str:
    return "".join(s.split())


def answers_match(predicted: str, gold: str, timeout_s: float = 2.0) -> bool:
    r"""Whether `predicted` is mathematically the same answer as `gold`, according to `math_verify`.

    Both strings are final answers (not whole solutions); each is wrapped in `\boxed{}` and parsed with
    `math_verify.parse`, then compared with `math_verify.verify(gold, predicted)`. So `0.5` matches
    `\frac{1}{2}`, `1,000` matches `1000`, `10\%` matches `10` and `0.1`, and `5 cm` matches `5`; see
    tests/test_math_answers.py for what is and is not accepted. Strings that are equal once spaces are
    removed match without calling math_verify.

    Never raises on bad input: an argument that is not a string or is blank, a prediction longer than
    `MAX_ANSWER_CHARS`, one that fails to parse, or a comparison still running after `timeout_s` seconds
    is False.

    Limits. Short inputs can cost a lot of time or memory (sympy spent over 30 s on `9^{9^{9}}` before we
    gave up; `(2^{10000000})!` grows by about 250 MB a second), so every comparison that needs math_verify
    runs in a helper Python process, whichever thread calls, and the calling process's memory, signal
    handlers and timers are left alone:

    - a `SIGALRM` timer (`setitimer`, so fractions of a second work) on the helper's main thread bounds
      parse + verify to `timeout_s` (math_verify's own timeouts, whole-second `signal.alarm`, are off); a
      helper that has not answered `timeout_s + 1` seconds later is killed;
    - the helper's address space is limited to its size once ready plus `_HELPER_MEMORY_HEADROOM_BYTES`;
      a MemoryError there is a False verdict (math_verify catches it, so the work may go on until the
      timer), and the helper keeps serving.

    Helpers start on first use (about a second), are reused, one per concurrent caller, and are replaced
    when they die or are killed. Each comparison costs one pipe round trip on top of math_verify's work.

    POSIX only (Linux, macOS), as the timer and the helper protocol need signals and `select` on pipes.
    """
    if not isinstance(predicted, str) or not isinstance(gold, str):
        return False
    if not predicted.strip() or not gold.strip() or len(predicted) > MAX_ANSWER_CHARS:
        return False
    if _squash(predicted) == _squash(gold):
        return True
    timeout_s = max(float(timeout_s), 0.01) if math.isfinite(timeout_s) else 2.0
    return _match_in_helper(predicted, gold, timeout_s)


def score_answer(text: str, gold: str) -> tuple[float, str | None]:
    r"""The RISE reward of a model output: (1.0 correct / 0.0 wrong / -1.0 no boxed answer, the answer);
    -1 is GSM8K's rule, and `feedlearn.envs.math_env` scores a MATH problem's missing answer 0.

    The answer is the last `\boxed{}` of `text` (see `extract_boxed`); if it equals `gold` once spaces are
    removed the reward is 1.0 at once, without math_verify, which keeps synthetic arithmetic cheap.
    """
    answer = extract_boxed(text)
    if answer is None:
        return -1.0, None
    if _squash(answer) == _squash(gold):
        return 1.0, answer
    return (1.0 if answers_match(answer, gold) else 0.0), answer


# --- comparison under a timer (run by a helper process, on its main thread) ------------------------------


class _OutOfTime(BaseException):
    """Raised by the SIGALRM handler; a BaseException so math_verify's `except Exception` lets it through."""


def _raise_out_of_time(signum, frame):
    raise _OutOfTime


class _DropTimeoutDisabledWarning(logging.Filter):
    """math_verify warns when its signal timeouts are off; here they are replaced, so the warning misleads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_math_verify = None


def _load_math_verify():
    """Import math_verify on first use (it pulls in sympy: half a second), quieting its timeout warning."""
    global _math_verify
    if _math_verify is None:
        import math_verify

        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
        _math_verify = math_verify
    return _math_verify


def _compare(predicted: str, gold: str) -> bool:
    """math_verify's verdict, with its own timeouts off (the caller bounds the time)."""
    mv = _load_math_verify()
    gold_parsed = mv.parse("\\boxed{" + gold + "}", parsing_timeout=None)
    pred_parsed = mv.parse("\\boxed{" + predicted + "}", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(mv.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _match_with_timer(predicted: str, gold: str, timeout_s: float) -> bool:
    """`_compare` interrupted by SIGALRM after `timeout_s`; must run in the main thread."""
    _load_math_verify()  # the import is not part of the budget
    old_handler = signal.signal(signal.SIGALRM, _raise_out_of_time)  # ValueError outside the main thread
    old_delay = 0.0
    started = time.monotonic()
    try:
        try:
            old_delay, _ = signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                return _compare(predicted, gold)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _OutOfTime:
            return False
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # re-arm the caller's timer with what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - started), 1e-3))


# --- comparison in a helper process (any thread) --------------------------------------------------------

# Address space a helper may add to its own once ready (math_verify and sympy loaded, one comparison done).
# Measured (Linux x86-64, CPython 3.11, sympy 1.14, math_verify 0.9): VmPeak 62 MB when ready, 70 MB after a
# dozen typical comparisons, 81 MB after `9^{9^{9}}` was cut off at 2 s; `(2^{10000000})!` reached 584 MB
# in 2 s and 1.3 GB in 5 s with no limit, and stops at the limit (~573 MiB) with this headroom. Relative to
# the ready size, so that platforms where Python maps more at start (say, a large locale archive) keep the
# same room.
_HELPER_MEMORY_HEADROOM_BYTES = 512 << 20
# The whole address-space limit where the helper cannot read its own size (no /proc/self/status).
_HELPER_MEMORY_FALLBACK_BYTES = 1 << 30
_HELPER_START_TIMEOUT_S = 60.0
_HELPER_GRACE_S = 1.0
_HELPER_CODE = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_feedlearn_math_answers_helper', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "module._helper_main(int(sys.argv[2]))\n"
)


def _own_address_space_bytes() -> int | None:
    """This process's peak virtual memory size (VmPeak), or None where /proc/self/status is missing."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmPeak:"):
                    return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _limit_address_space(headroom_bytes: int) -> None:
    """Cap this process's address space at its current peak plus `headroom_bytes` (best effort)."""
    try:
        import resource

        size = _own_address_space_bytes()
        limit = _HELPER_MEMORY_FALLBACK_BYTES if size is None else size + headroom_bytes
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass  # no limit where it cannot be set


def _helper_main(headroom_bytes: int) -> None:
    """Body of a helper process: answer one JSON request `[predicted, gold, timeout_s]` per line."""
    reply = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the replies
    _load_math_verify()
    _compare("1/2", "0.5")  # load the parts of sympy a comparison needs before measuring our size
    _limit_address_space(headroom_bytes)
    reply.write(b"ready\n")
    for line in sys.stdin.buffer:
        try:
            predicted, gold, timeout_s = json.loads(line)
            verdict = b"1\n" if _match_with_timer(predicted, gold, float(timeout_s)) else b"0\n"
        except MemoryError:  # the address-space limit: a False verdict, and serve on
            verdict = b"0\n"
        except Exception as e:  # the grader itself failed: False, with the reason for the caller to log
            verdict = (
                b"!" + f"{type(e).__name__}: {e}".encode(errors="replace")[:300].replace(b"\n", b" ") + b"\n"
            )
        reply.write(verdict)


class _Helper:
    """A helper process and the pipes to it."""

    def __init__(self) -> None:
        failure = f"the answer-checking helper process ({sys.executable}) did not start"
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable or "python3",
                    "-c",
                    _HELPER_CODE,
                    str(Path(__file__).resolve()),
                    str(int(_HELPER_MEMORY_HEADROOM_BYTES)),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError as e:
            raise RuntimeError(f"{failure}: {e}") from e
        if self._read_line(_HELPER_START_TIMEOUT_S) != b"ready\n":
            self.close()
            raise RuntimeError(f"{failure}; check that math_verify is installed in that interpreter")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read_line(self, timeout_s: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 64)
            if not chunk:
                return None  # the helper exited
            data += chunk
        return data

    def ask(self, predicted: str, gold: str, timeout_s: float) -> bool | None:
        """The helper's verdict, or None if it died or overran (then it must be closed)."""
        try:
            self.proc.stdin.write(json.dumps([predicted, gold, timeout_s]).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        reply = self._read_line(timeout_s + _HELPER_GRACE_S)
        if reply is not None and reply.startswith(b"!"):
            _grader_failed(reply[1:].decode(errors="replace").strip())
            return False
        return {b"1\n": True, b"0\n": False}.get(reply)

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


_failures = 0


def grader_failures() -> int:
    """How many comparisons this process counted as wrong because math_verify itself raised."""
    return _failures


def _grader_failed(reason: str) -> None:
    """Count a comparison the grader failed on; the first one in a process is logged with its reason."""
    global _failures
    _failures += 1
    if _failures == 1:
        logger.warning(
            "math_verify failed on an answer (%s); it counts as wrong, and later failures are counted "
            "only (grader_failures)",
            reason,
        )


_idle_helpers: list[_Helper] = []
_helpers_lock = threading.Lock()


def _match_in_helper(predicted: str, gold: str, timeout_s: float) -> bool:
    helper = None
    with _helpers_lock:
        while _idle_helpers and helper is None:
            helper = _idle_helpers.pop()
            if not helper.alive():
                helper.close()
                helper = None
    if helper is None:
        helper = _Helper()
    try:
        verdict = helper.ask(predicted, gold, timeout_s)
    except BaseException:  # e.g. KeyboardInterrupt while waiting: the helper is mid-request, unusable
        helper.close()
        raise
    if verdict is None:
        helper.close()
        return False
    with _helpers_lock:
        _idle_helpers.append(helper)
    return verdict


def _close_idle_helpers() -> None:
    with _helpers_lock:
        helpers = list(_idle_helpers)
        _idle_helpers.clear()
    for helper in helpers:
        helper.close()


def _forget_helpers_after_fork() -> None:
    """A forked child must not share its parent's helpers (their pipes would carry two conversations)."""
    global _helpers_lock
    _helpers_lock = threading.Lock()
    _idle_helpers.clear()


atexit.register(_close_idle_helpers)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers_after_fork)
