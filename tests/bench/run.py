"""Benchmark the gateway against calling the upstream directly; print one table.

Usage: ``.venv/bin/python tests/bench/run.py [--quick] [--baseline REV]`` from the repo root.
With ``--baseline REV`` a second gateway runs from a temporary git worktree of
REV and every load point is measured direct, baseline, current (README.md).

Why "direct vs gateway" on the same box, same client, same upstream: absolute
numbers depend on the machine, but the ratio and the added latency are what
the gateway is responsible for. Everything runs on 127.0.0.1 and every process
started here is stopped on exit, including Ctrl-C and errors.

Exit status: 0 when the run completed cleanly (whatever the targets say);
1 when something broke (a process failed to start or died, a non-2xx or
socket error, a stream cut short or malformed); 130 when interrupted.
"""
from __future__ import annotations

import argparse
import math
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from loadgen import LoadError, WrkResult, run_wrk
from procs import Children, ForeignLoad, RssSampler, cpu_seconds, rss_bytes, tree
from report import Point, Results, render, render_comparison
from revision import Checkout, RevisionError, check_imports, check_process_tree, source_env, work_tree_label
from servers import (DEFAULT_GATEWAY_CMD, HOST, REPO, StartError, Started, start_gateway, start_upstream,
                     write_config)
from streams import StreamRun, run_streams

CHAT_PATH = "/v1/chat/completions"


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Direct-vs-gateway benchmark (see tests/bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="3 s per load point instead of 10 s")
    parser.add_argument("--duration", type=float, help="seconds per load point (overrides --quick)")
    parser.add_argument("--connections", default="1,16,64,256", help="comma-separated wrk concurrency levels")
    parser.add_argument("--streams", type=int, default=200, help="concurrent streaming requests")
    parser.add_argument("--chunks", type=int, default=100, help="content chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=10.0, help="upstream delay between chunks")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--upstream-procs", type=int, default=1, help="fake upstream processes (SO_REUSEPORT)")
    parser.add_argument("--gateway-cmd", default=DEFAULT_GATEWAY_CMD,
                        help="gateway launch command; placeholders {bin} {host} {port} {workers} {config}"
                             " (run from the repo root, with SHIN_GATEWAY_CONFIG={config} in the environment)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the gateway of git revision REV (e.g. HEAD, a commit hash) from a"
                             " temporary worktree and compare it with the work tree, load point by load point")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    return args


class Broken(RuntimeError):
    """Something that makes the run's numbers meaningless."""


def _ensure_alive(*servers: Started) -> None:
    for server in servers:
        if server.proc.poll() is not None:
            raise Broken(f"process exited with code {server.proc.returncode}; see {server.log}")


def _wait_for_workers(root: int, workers: int, timeout: float = 15.0) -> None:
    """Idle RSS is only meaningful once every worker has booted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(tree(root)) >= 1 + workers:
            return
        time.sleep(0.05)
    _log(f"warning: fewer than {workers} workers after {timeout:.0f} s")


def _through(connections: int, seconds: float, upstream: Started, gateway: Started,
             ) -> tuple[WrkResult, float, float]:
    """One wrk run through ``gateway``: result, gateway CPU ms per request, upstream CPU %."""
    gw_pids, up_pids = tree(gateway.proc.pid), tree(upstream.proc.pid)
    gw_cpu, up_cpu, started = cpu_seconds(gw_pids), cpu_seconds(up_pids), time.perf_counter()
    result = run_wrk(f"http://{HOST}:{gateway.port}{CHAT_PATH}", connections, seconds)
    wall = time.perf_counter() - started
    # rescan: a worker recycled mid-run is in the master's cutime, a new one is in the tree
    gw_cpu = cpu_seconds(tree(gateway.proc.pid)) - gw_cpu
    up_cpu = cpu_seconds(tree(upstream.proc.pid)) - up_cpu
    cpu_ms = gw_cpu * 1000 / result.requests if result.requests else float("nan")
    return result, cpu_ms, up_cpu / wall * 100


def _measure_point(connections: int, seconds: float, upstream: Started, gateway: Started,
                   baseline: Started | None = None) -> Point:
    """Direct, then the baseline gateway (if any), then the gateway: back to back,
    so drift in the machine's state hits all of them alike."""
    direct = run_wrk(f"http://{HOST}:{upstream.port}{CHAT_PATH}", connections, seconds)
    time.sleep(0.2)  # let the previous run's sockets close before the next one starts
    base = (None, math.nan, math.nan)
    if baseline is not None:
        base = _through(connections, seconds, upstream, baseline)
        _ensure_alive(upstream, baseline, gateway)
        time.sleep(0.2)
    through, cpu_ms, up_pct = _through(connections, seconds, upstream, gateway)
    _ensure_alive(*(s for s in (upstream, baseline, gateway) if s is not None))
    point = Point(connections, direct, through, gateway_cpu_ms_per_req=cpu_ms, upstream_cpu_pct=up_pct,
                  baseline=base[0], baseline_cpu_ms_per_req=base[1], baseline_upstream_cpu_pct=base[2])
    time.sleep(0.2)
    return point


def _problems(points: list[Point], streams: dict[str, StreamRun]) -> list[str]:
    problems = []
    for p in points:
        sides = (("direct", p.direct), ("baseline", p.baseline), ("gateway", p.gateway))
        for name, r in ((n, r) for n, r in sides if r is not None):
            if r.non2xx or r.socket_errors or not r.requests:
                problems.append(f"c={p.connections} {name}: {r.requests} requests, {r.non2xx} non-2xx,"
                                f" {r.socket_errors} socket errors")
    for name, run in streams.items():
        failures = run.failures
        if failures:
            problems.append(f"{name} streams: {len(failures)}/{len(run.results)} failed, e.g. {failures[0]}")
    return problems


def _start_gateway(args: argparse.Namespace, children: Children, workdir: Path, config: Path, name: str,
                   checkout: Path | None = None) -> tuple[Started, int]:
    """Start one gateway, wait for its workers; return it and its idle RSS."""
    if checkout is None:
        started = start_gateway(children, workdir, config, args.workers, args.gateway_cmd, name=name)
    else:
        env = source_env(checkout)
        origins = check_imports(checkout, env)
        _log(f"{name} imports from the checkout: " + ", ".join(f"{m} {o}" for m, o in origins.items()))
        started = start_gateway(children, workdir, config, args.workers, args.gateway_cmd, name=name,
                                source=checkout, env=env)
    _log(f"{name} answered 200 after {started.first_200:.3f} s (pid {started.proc.pid}, port {started.port})")
    _wait_for_workers(started.proc.pid, args.workers)
    if checkout is not None:
        check_process_tree(tree(started.proc.pid), checkout)
    time.sleep(1.0)  # let start-up allocations settle before calling it idle
    return started, rss_bytes(tree(started.proc.pid))


def bench(args: argparse.Namespace, workdir: Path, children: Children,
          checkout: Checkout | None = None) -> tuple[Results, list[str]]:
    foreign = ForeignLoad()
    _log(f"starting fake upstream ({args.upstream_procs} process(es)); logs in {workdir}")
    upstream = start_upstream(children, workdir, args.upstream_procs, args.chunks, args.chunk_delay_ms)
    config = write_config(workdir, upstream.port)
    baseline, base_rss_idle = None, 0
    if checkout is not None:
        _log(f"starting baseline gateway, {checkout.label}, from {checkout.path}")
        baseline, base_rss_idle = _start_gateway(args, children, workdir, config, "baseline", checkout.path)
    _log("starting gateway" + (" (work tree)" if checkout is not None else ""))
    gateway, rss_idle = _start_gateway(args, children, workdir, config, "gateway")
    servers = [s for s in (upstream, baseline, gateway) if s is not None]
    # measured in this order at every load point: direct, baseline, current
    sides = [("direct", upstream)] + ([("baseline", baseline)] if baseline else []) + [("gateway", gateway)]

    samplers = {name: RssSampler(server.proc.pid) for name, server in sides[1:]}
    for sampler in samplers.values():
        sampler.start()
    try:
        _log("warm-up (connection pools, lazy imports)")
        for _, server in sides:
            run_wrk(f"http://{HOST}:{server.port}{CHAT_PATH}", 16, 1.0)
        points = []
        for connections in args.connections:
            _log(f"non-streaming, {connections} connections, {args.duration:g} s each for"
                 f" {', '.join(name for name, _ in sides)}")
            points.append(_measure_point(connections, args.duration, upstream, gateway, baseline))
        streams = {}
        for name, server in sides:
            _log(f"streaming, {args.streams} streams x {args.chunks} chunks, {name}")
            streams[name] = run_streams(HOST, server.port, args.streams, args.chunks)
            _ensure_alive(*servers)
            time.sleep(0.2)
    finally:
        peaks = {name: sampler.stop() for name, sampler in samplers.items()}
    background = foreign.cores(sum(cpu_seconds(tree(s.proc.pid)) for s in servers))
    results = Results(points, streams["direct"], streams["gateway"], args.streams, args.chunks,
                      rss_idle, max(peaks["gateway"], rss_idle), gateway.first_200, args.workers, background)
    if baseline is not None and checkout is not None:
        results.command = shlex.join(sys.orig_argv)
        results.baseline_label = checkout.label
        results.current_label = work_tree_label(REPO)
        results.streams_baseline = streams["baseline"]
        results.baseline_rss_idle = base_rss_idle
        results.baseline_rss_peak = max(peaks["baseline"], base_rss_idle)
        results.baseline_first_200 = baseline.first_200
    return results, _problems(points, streams)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    began = time.perf_counter()
    if shutil.which("wrk") is None:
        print("BROKEN: wrk is not on PATH; install it, e.g. `apt-get install -y wrk`", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="shin-gateway-bench-"))
    children = Children()
    checkout = None
    keep_logs = True
    try:
        if args.baseline:
            checkout = Checkout(REPO, args.baseline)
            _log(f"checking out baseline {checkout.label}")
            checkout.add()
        results, problems = bench(args, workdir, children, checkout)
        print(render_comparison(results) if checkout is not None else render(results))
        for problem in problems:
            print(f"BROKEN: {problem}")
        keep_logs = bool(problems)
        return 1 if problems else 0
    except (StartError, Broken, LoadError, RevisionError) as exc:
        print(f"BROKEN: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        children.stop_all()  # before removing the checkout the baseline gateway runs in
        if checkout is not None:
            checkout.remove()
        if keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"wall-clock time {time.perf_counter() - began:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
