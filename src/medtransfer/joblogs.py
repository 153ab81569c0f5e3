"""What the console shows when jobs fail: the last lines of each failed job's own log.

Snakemake reports a failed job as an "Error in rule <name>:" block that names the job's log file
and says only "(command exited with non-zero exit code)"; the reason (our CLI's one-line error)
is in that file. The Snakefile's ``onerror`` handler passes the run's main log to
:func:`report_failed_jobs`, which finds those blocks and prints the tail of every log they name,
so nobody has to go looking. Pure text handling: no Snakemake import.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

TAIL_LINES = 15  # per failed job: our CLI's error is the last line; a traceback fits above it
LOG_HINT = "(check log file(s) for error details)"


def failed_job_logs(text: str) -> list[tuple[str, list[str]]]:
    """(rule, log paths) of each "Error in rule" block of a Snakemake main log, in order of first
    failure, each job once (a retried job fails with the same block again)."""
    found: dict[tuple[str, tuple[str, ...]], None] = {}
    rule = None
    for line in text.splitlines():
        if line.startswith("Error in rule ") and line.rstrip().endswith(":"):
            rule = line[len("Error in rule "):].rstrip()[:-1]
            continue
        if rule is None:
            continue
        if not line.startswith((" ", "\t")):  # the block ends at the first unindented line
            rule = None
            continue
        field = line.strip()
        if field.startswith("log:"):
            paths = field[len("log:"):].replace(LOG_HINT, "")
            found[(rule, tuple(p.strip() for p in paths.split(",") if p.strip()))] = None
    return [(rule, list(paths)) for rule, paths in found]


def tail(path: str | Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a text file (read whole: job logs are small)."""
    with open(path, errors="replace") as handle:
        return handle.read().splitlines()[-lines:]


def failure_report(main_logs: str | Path | Iterable[str | Path], lines: int = TAIL_LINES) -> str:
    """The console text for a failed run: for each failed job, its rule, its log and that log's
    last ``lines`` lines. ``main_logs``: the path(s) Snakemake hands its ``onerror`` handler."""
    if isinstance(main_logs, (str, Path)):
        main_logs = [main_logs]
    jobs: dict[tuple[str, tuple[str, ...]], None] = {}
    for main_log in main_logs:
        try:
            text = Path(main_log).read_text(errors="replace")
        except OSError:
            continue
        jobs.update({(rule, tuple(paths)): None for rule, paths in failed_job_logs(text)})
    parts = []
    for rule, paths in jobs:
        for path in paths:
            try:
                body = tail(path, lines)
            except OSError:
                body = ["(the job wrote no log here)"]
            parts.append("\n".join([f"--- rule {rule}: last lines of {path} ---", *body]))
    if not parts:
        return ""
    return "\n".join(["Failed jobs (the end of each job's log):", *parts])


def report_failed_jobs(main_logs: str | Path | Sequence[str | Path], stream: TextIO | None = None) -> None:
    """Print :func:`failure_report` (nothing when no job failed) to ``stream`` (stderr)."""
    report = failure_report(main_logs)
    if report:
        print(report, file=stream or sys.stderr, flush=True)
