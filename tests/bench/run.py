"""Benchmark the gateway against calling the upstream directly; print one table.

Usage: ``.venv/bin/python tests/bench/run.py [--quick]`` from the repo root.

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
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from loadgen import LoadError, run_wrk
from procs import Children, ForeignLoad, RssSampler, cpu_seconds, rss_bytes, tree
from report import Point, Results, render
from servers import DEFAULT_GATEWAY_CMD, HOST, StartError, Started, start_gateway, start_upstream
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


def _measure_point(connections: int, seconds: float, upstream: Started, gateway: Started) -> Point:
    direct = run_wrk(f"http://{HOST}:{upstream.port}{CHAT_PATH}", connections, seconds)
    time.sleep(0.2)  # let the direct run's sockets close before the next one starts
    gw_pids, up_pids = tree(gateway.proc.pid), tree(upstream.proc.pid)
    gw_cpu, up_cpu, started = cpu_seconds(gw_pids), cpu_seconds(up_pids), time.perf_counter()
    through = run_wrk(f"http://{HOST}:{gateway.port}{CHAT_PATH}", connections, seconds)
    wall = time.perf_counter() - started
    # rescan: a worker recycled mid-run is in the master's cutime, a new one is in the tree
    gw_cpu = cpu_seconds(tree(gateway.proc.pid)) - gw_cpu
    up_cpu = cpu_seconds(tree(upstream.proc.pid)) - up_cpu
    _ensure_alive(upstream, gateway)
    point = Point(connections, direct, through,
                  gateway_cpu_ms_per_req=gw_cpu * 1000 / through.requests if through.requests else float("nan"),
                  upstream_cpu_pct=up_cpu / wall * 100)
    time.sleep(0.2)
    return point


def _problems(points: list[Point], streams: dict[str, StreamRun]) -> list[str]:
    problems = []
    for p in points:
        for name, r in (("direct", p.direct), ("gateway", p.gateway)):
            if r.non2xx or r.socket_errors or not r.requests:
                problems.append(f"c={p.connections} {name}: {r.requests} requests, {r.non2xx} non-2xx,"
                                f" {r.socket_errors} socket errors")
    for name, run in streams.items():
        failures = run.failures
        if failures:
            problems.append(f"{name} streams: {len(failures)}/{len(run.results)} failed, e.g. {failures[0]}")
    return problems


def bench(args: argparse.Namespace, workdir: Path, children: Children) -> tuple[Results, list[str]]:
    foreign = ForeignLoad()
    _log(f"starting fake upstream ({args.upstream_procs} process(es)); logs in {workdir}")
    upstream = start_upstream(children, workdir, args.upstream_procs, args.chunks, args.chunk_delay_ms)
    _log("starting gateway")
    gateway = start_gateway(children, workdir, upstream.port, args.workers, args.gateway_cmd)
    _log(f"gateway answered 200 after {gateway.first_200:.3f} s (pid {gateway.proc.pid}, port {gateway.port})")
    _wait_for_workers(gateway.proc.pid, args.workers)
    time.sleep(1.0)  # let start-up allocations settle before calling it idle
    rss_idle = rss_bytes(tree(gateway.proc.pid))

    sampler = RssSampler(gateway.proc.pid)
    sampler.start()
    try:
        _log("warm-up (connection pools, lazy imports)")
        for port in (upstream.port, gateway.port):
            run_wrk(f"http://{HOST}:{port}{CHAT_PATH}", 16, 1.0)
        points = []
        for connections in args.connections:
            _log(f"non-streaming, {connections} connections, {args.duration:g} s each for direct and gateway")
            points.append(_measure_point(connections, args.duration, upstream, gateway))
        streams = {}
        for name, server in (("direct", upstream), ("gateway", gateway)):
            _log(f"streaming, {args.streams} streams x {args.chunks} chunks, {name}")
            streams[name] = run_streams(HOST, server.port, args.streams, args.chunks)
            _ensure_alive(upstream, gateway)
            time.sleep(0.2)
    finally:
        rss_peak = sampler.stop()
    background = foreign.cores(cpu_seconds(tree(gateway.proc.pid)) + cpu_seconds(tree(upstream.proc.pid)))
    results = Results(points, streams["direct"], streams["gateway"], args.streams, args.chunks,
                      rss_idle, max(rss_peak, rss_idle), gateway.first_200, args.workers, background)
    return results, _problems(points, streams)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="shin-gateway-bench-"))
    children = Children()
    keep_logs = True
    try:
        results, problems = bench(args, workdir, children)
        print(render(results))
        for problem in problems:
            print(f"BROKEN: {problem}")
        keep_logs = bool(problems)
        return 1 if problems else 0
    except (StartError, Broken, LoadError) as exc:
        print(f"BROKEN: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        if keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"wall-clock time {time.perf_counter() - began:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
