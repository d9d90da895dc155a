"""Benchmark the gateway against calling the upstream directly; print one table.

Usage: ``.venv/bin/python tests/bench/run.py [--quick] [--baseline REV | --variants LIST]``
from the repo root. With ``--baseline REV`` a second gateway runs from a
temporary git worktree of REV and every load point is measured direct,
baseline, current; with ``--variants single,least-busy-3,…`` the work tree's
gateway runs once per router configuration, all measured at every load point
(README.md).

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
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from loadgen import LoadError, WrkResult, run_wrk
from procs import Children, ForeignLoad, RssSampler, cpu_seconds, rss_bytes, tree
from report import Measured, Point, Results, Side, VariantResults, render, render_comparison, render_variants
from revision import Checkout, RevisionError, check_imports, check_process_tree, source_env, work_tree_label
from servers import (DEFAULT_GATEWAY_CMD, HOST, REPO, StartError, Started, readiness, served_by, start_gateway,
                     start_upstream, write_config)
from streams import StreamRun, run_streams
from variants import DEFAULT_REDIS_URL, Variant, VariantError, check_redis, parse_variants

CHAT_PATH = "/v1/chat/completions"
SAMPLE_BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Which deployment?"}],"max_tokens":8}'
SAMPLE_REQUESTS = 30  # sequential calls per variant, to show which deployments serve
COST_LIMIT, COST_LIMIT_REDIS = 0.05, 0.15  # largest c=64 throughput loss of a variant against the first


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
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--baseline", metavar="REV",
                       help="also run the gateway of git revision REV (e.g. HEAD, a commit hash) from a"
                            " temporary worktree and compare it with the work tree, load point by load point")
    which.add_argument("--variants", metavar="LIST",
                       help="run the work tree's gateway once per router config and compare them, load point"
                            " by load point: 'single' or '<strategy>-<N>[-redis]', e.g."
                            " single,least-busy-3,least-busy-3-redis (ratios against the first)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help="general_settings.redis_url of the -redis variants")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    try:
        args.variants = parse_variants(args.variants) if args.variants else None
    except VariantError as exc:
        parser.error(str(exc))
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


def _measure_point(connections: int, seconds: float, upstream: Started, gateways: dict[str, Started],
                   order: list[str]) -> Measured:
    """Direct, then each gateway in ``order``: back to back, so drift in the
    machine's state hits all of them alike."""
    direct = run_wrk(f"http://{HOST}:{upstream.port}{CHAT_PATH}", connections, seconds)
    sides = {}
    for name in order:
        time.sleep(0.2)  # let the previous run's sockets close before the next one starts
        sides[name] = Side(*_through(connections, seconds, upstream, gateways[name]))
        _ensure_alive(upstream, *gateways.values())
    time.sleep(0.2)
    return Measured(connections, direct, sides, list(order))


def _legacy_point(m: Measured) -> Point:
    """A load point of a plain or ``--baseline`` run, for their unchanged tables."""
    gw, base = m.sides["gateway"], m.sides.get("baseline")
    point = Point(m.connections, m.direct, gw.result, gateway_cpu_ms_per_req=gw.cpu_ms_per_req,
                  upstream_cpu_pct=gw.upstream_cpu_pct)
    if base is not None:
        point.baseline, point.baseline_cpu_ms_per_req = base.result, base.cpu_ms_per_req
        point.baseline_upstream_cpu_pct = base.upstream_cpu_pct
    return point


def _problems(points: list[Measured], streams: dict[str, StreamRun]) -> list[str]:
    problems = []
    for p in points:
        sides = [("direct", p.direct)] + [(name, side.result) for name, side in p.sides.items()]
        for name, r in sides:
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


@dataclass
class Run:
    """What every gateway of a run did: wrk points, streams, peak RSS."""

    points: list[Measured]
    streams: dict[str, StreamRun]  # "direct" and each gateway
    peaks: dict[str, int]
    background_cores: float


def _measure(args: argparse.Namespace, upstream: Started, gateways: dict[str, Started], foreign: ForeignLoad,
             rotate: bool = False) -> Run:
    """Every load point for direct and each gateway, then the streams. ``rotate``:
    at the i-th load point the order starts at the i-th gateway, so with repeated
    points none of them always runs first."""
    names = list(gateways)
    servers = [upstream, *gateways.values()]
    samplers = {name: RssSampler(server.proc.pid) for name, server in gateways.items()}
    for sampler in samplers.values():
        sampler.start()
    try:
        _log("warm-up (connection pools, lazy imports)")
        for server in servers:
            run_wrk(f"http://{HOST}:{server.port}{CHAT_PATH}", 16, 1.0)
        points = []
        for i, connections in enumerate(args.connections):
            order = names[i % len(names):] + names[:i % len(names)] if rotate else names
            _log(f"non-streaming, {connections} connections, {args.duration:g} s each for direct, {', '.join(order)}")
            points.append(_measure_point(connections, args.duration, upstream, gateways, order))
        streams = {}
        for name, server in [("direct", upstream), *gateways.items()]:
            _log(f"streaming, {args.streams} streams x {args.chunks} chunks, {name}")
            streams[name] = run_streams(HOST, server.port, args.streams, args.chunks)
            _ensure_alive(*servers)
            time.sleep(0.2)
    finally:
        peaks = {name: sampler.stop() for name, sampler in samplers.items()}
    background = foreign.cores(sum(cpu_seconds(tree(s.proc.pid)) for s in servers))
    return Run(points, streams, peaks, background)


def bench(args: argparse.Namespace, workdir: Path, children: Children,
          checkout: Checkout | None = None) -> tuple[Results, list[str]]:
    foreign = ForeignLoad()
    _log(f"starting fake upstream ({args.upstream_procs} process(es)); logs in {workdir}")
    upstream = start_upstream(children, workdir, args.upstream_procs, args.chunks, args.chunk_delay_ms)
    config = write_config(workdir, upstream.port)
    gateways, rss_idle = {}, {}
    if checkout is not None:
        _log(f"starting baseline gateway, {checkout.label}, from {checkout.path}")
        gateways["baseline"], rss_idle["baseline"] = _start_gateway(args, children, workdir, config, "baseline",
                                                                    checkout.path)
    _log("starting gateway" + (" (work tree)" if checkout is not None else ""))
    # measured in this order at every load point: direct, baseline, current
    gateways["gateway"], rss_idle["gateway"] = _start_gateway(args, children, workdir, config, "gateway")
    run = _measure(args, upstream, gateways, foreign)
    gateway = gateways["gateway"]
    results = Results([_legacy_point(m) for m in run.points], run.streams["direct"], run.streams["gateway"],
                      args.streams, args.chunks, rss_idle["gateway"], max(run.peaks["gateway"], rss_idle["gateway"]),
                      gateway.first_200, args.workers, run.background_cores)
    if checkout is not None:
        results.command = shlex.join(sys.orig_argv)
        results.baseline_label = checkout.label
        results.current_label = work_tree_label(REPO)
        results.streams_baseline = run.streams["baseline"]
        results.baseline_rss_idle = rss_idle["baseline"]
        results.baseline_rss_peak = max(run.peaks["baseline"], rss_idle["baseline"])
        results.baseline_first_200 = gateways["baseline"].first_200
    return results, _problems(run.points, run.streams)


def _describe(variant: Variant, redis_url: str) -> str:
    count = f"{variant.deployments} deployment{'s' if variant.deployments > 1 else ''}"
    state = f"redis_url {redis_url}" if variant.redis else "no redis_url"
    return f"{count} of bench-model, {variant.strategy}, {state}"


def bench_variants(args: argparse.Namespace, workdir: Path, children: Children,
                   ) -> tuple[VariantResults, list[str]]:
    """The work tree's gateway once per variant config, all against one upstream."""
    variants: list[Variant] = args.variants
    if any(v.redis for v in variants):
        check_redis(args.redis_url)
    foreign = ForeignLoad()
    _log(f"starting fake upstream ({args.upstream_procs} process(es)); logs in {workdir}")
    upstream = start_upstream(children, workdir, args.upstream_procs, args.chunks, args.chunk_delay_ms)
    gateways, rss_idle, served = {}, {}, {}
    for variant in variants:
        config = write_config(workdir, upstream.port, variant.config(HOST, upstream.port, args.redis_url),
                              name=variant.name)
        _log(f"starting gateway {variant.name}: {_describe(variant, args.redis_url)}")
        gateways[variant.name], rss_idle[variant.name] = _start_gateway(args, children, workdir, config,
                                                                        variant.name)
        served[variant.name] = served_by(gateways[variant.name].port, SAMPLE_REQUESTS, SAMPLE_BODY)
        _log(f"{variant.name}: {readiness(gateways[variant.name].port)}; {SAMPLE_REQUESTS} sequential calls"
             f" served by {served[variant.name]}")
    run = _measure(args, upstream, gateways, foreign, rotate=True)
    names = [v.name for v in variants]
    results = VariantResults(
        command=shlex.join(sys.orig_argv), label=work_tree_label(REPO), variants=names,
        describe={v.name: _describe(v, args.redis_url) for v in variants}, points=run.points,
        streams_direct=run.streams["direct"], streams={n: run.streams[n] for n in names},
        stream_count=args.streams, chunks=args.chunks, rss_idle=rss_idle,
        rss_peak={n: max(run.peaks[n], rss_idle[n]) for n in names},
        first_200={n: gateways[n].first_200 for n in names},
        readiness={n: readiness(gateways[n].port) for n in names}, served=served, workers=args.workers,
        background_cores=run.background_cores,
        cost_limits={v.name: COST_LIMIT_REDIS if v.redis else COST_LIMIT for v in variants})
    return results, _problems(run.points, run.streams)


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
        if args.variants:
            variant_results, problems = bench_variants(args, workdir, children)
            print(render_variants(variant_results))
        else:
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
    except (StartError, Broken, LoadError, RevisionError, VariantError) as exc:
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
