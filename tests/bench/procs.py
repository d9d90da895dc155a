"""Start, watch and always stop the benchmark's child processes.

Why process groups: the gateway is a gunicorn master that forks workers and the
fake upstream may fork too. Each child is started in its own session, so a
terminal Ctrl-C reaches only the runner, which then stops every group it
started, by group id, in a ``finally`` -- nothing is left listening afterwards
and nothing the runner did not start is touched.

If the runner itself is SIGKILLed, the direct children still get SIGTERM from
the kernel (``PR_SET_PDEATHSIG``) and take their own workers down with them.

Why read /proc directly: CPU ticks and VmRSS are all the benchmark needs, and
reading them directly keeps the sampler cheap on a two-core box.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: if the runner is killed outright (no
    ``finally``), the kernel sends the child SIGTERM instead of orphaning it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Children:
    """Registry of started processes; ``stop_all`` is safe to call repeatedly."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
              log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        self.procs.append(proc)
        return proc

    def stop_all(self, grace: float = 5.0) -> None:
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # also reaps any stray grandchildren
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session made pid the group id
    except (ProcessLookupError, PermissionError):
        pass


# --- /proc readers ---------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2:].split()


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants (one scan of /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo and len(found) < 10_000:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, ()))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes plus cutime+cstime of their reaped children,
    so a worker recycled mid-run still has its CPU counted (via its parent)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:  # fields[11:15] = utime, stime, cutime, cstime
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # minus idle and iowait


def own_cpu_seconds() -> float:
    """CPU of this runner plus its reaped children (every finished wrk run)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """How much CPU something other than the benchmark used while it ran.

    On a two-core box any other load (a second benchmark, a test suite) skews
    every figure, so the runner measures it instead of assuming a quiet machine:
    machine busy time minus the runner, wrk and the trees it started. On a
    quiet machine this reads 0.0 even at ~40k loopback requests/s, so the
    network work is charged to the processes and any excess is real."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.machine = machine_busy_seconds()
        self.own = own_cpu_seconds()

    def cores(self, started_trees_cpu: float) -> float:
        """Average foreign cores so far; pass the CPU of the still-running trees."""
        wall = time.perf_counter() - self.started
        foreign = (machine_busy_seconds() - self.machine) - (own_cpu_seconds() - self.own) - started_trees_cpu
        return max(0.0, foreign / wall) if wall > 0 else 0.0


class RssSampler(threading.Thread):
    """Background peak-RSS sampler for one process tree.

    The tree is rescanned every second (workers may be recycled); RSS is read
    every ``interval`` seconds. Stops when ``stop()`` is called, or after
    ``max_seconds`` so a forgotten sampler cannot run forever.
    """

    def __init__(self, root: int, interval: float = 0.1, max_seconds: float = 3600.0) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.root, self.interval, self.max_seconds = root, interval, max_seconds
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        pids, scanned = tree(self.root), time.monotonic()
        while not self._halt.is_set() and time.monotonic() - started < self.max_seconds:
            if time.monotonic() - scanned > 1.0:
                pids, scanned = tree(self.root), time.monotonic()
            self.peak = max(self.peak, rss_bytes(pids))
            self._halt.wait(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join(5.0)
        return self.peak
