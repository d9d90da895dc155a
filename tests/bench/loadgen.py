"""Drive non-streaming load with wrk and read back its results.

Why wrk: it is a C load generator, so at high concurrency the client is not the
bottleneck and latency percentiles come from its full histogram. The request
body and the result line are defined in ``post.lua``; this module only builds
the command line and parses the single ``BENCH_RESULT {json}`` line.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("post.lua")
RESULT_TAG = "BENCH_RESULT "


class LoadError(RuntimeError):
    """wrk did not run or did not report; the message carries its output."""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int  # connect + read + write errors and timeouts

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(url: str, connections: int, seconds: float, api_key: str | None = None) -> WrkResult:
    """One fixed-duration wrk run; two threads (one if there is one connection).
    ``api_key``: sent as ``Authorization: Bearer`` (default: post.lua's, the bench master key)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise LoadError("wrk is not installed")
    threads = min(2, connections)  # wrk refuses fewer connections than threads
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
           "--latency", "-s", str(SCRIPT), url]
    if api_key:
        cmd += ["--", api_key]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"wrk did not finish: {' '.join(cmd)}") from exc
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            data = json.loads(line[len(RESULT_TAG):])
            return WrkResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                non2xx=data["non2xx"],
                socket_errors=sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")),
            )
    raise LoadError(f"wrk exited {out.returncode} without a result:\n{out.stdout}\n{out.stderr}")
