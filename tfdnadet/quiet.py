"""Quiet start-up: TensorFlow's C++ start-up lines kept off the console of the CLI, its worker processes and the benchmarks."""

import atexit
import os
import re
import sys
import threading

# TensorFlow's C++ start-up lines (absl logging before its initialisation ignores TF_CPP_MIN_LOG_LEVEL).
TF_STARTUP_LINE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [\d:. ]+\d+ \w+\.cc:\d+\] .*"
    rb"|To enable the following instructions: .* in other operations, rebuild TensorFlow with the appropriate compiler flags\.)\s*$"
)


def filter_tensorflow_startup_lines() -> None:
    """Route file descriptor 2 (where C++ code, and child processes, write) through a thread that drops
    TensorFlow's start-up lines; Python's sys.stderr keeps writing to the terminal itself, so progress bars
    still see a terminal."""
    terminal = os.dup(2)
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not TF_STARTUP_LINE.match(line):
                    os.write(terminal, line)

    forwarding = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarding.start()

    @atexit.register
    def flush() -> None:  # pass on what C++ wrote last (a child process may still hold the pipe: wait briefly)
        os.close(2)
        forwarding.join(timeout=1.0)


def quiet_startup() -> None:
    """Call before TensorFlow is imported: its log level for this process and its children, and the filter above
    (only in a real process, not under a test that captures sys.stderr)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if sys.stderr is sys.__stderr__:
        filter_tensorflow_startup_lines()
