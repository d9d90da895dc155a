"""Benchmark the gateway against calling the upstream directly; print one table.

Usage: ``.venv/bin/python tests/bench/run.py [--quick] [--baseline REV | --variants LIST | --providers LIST]``
from the repo root. With ``--baseline REV`` a second gateway runs from a
temporary git worktree of REV and every load point is measured direct,
baseline, current; with ``--variants single,least-busy-3,…`` the work tree's
gateway runs once per router configuration, all measured at every load point;
with ``--providers openai,anthropic`` only the streaming load runs, through one
gateway's model group per upstream wire format, with its CPU per stream
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
import contextlib
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
from providers import (CPU_LIMIT, PROVIDERS, REFERENCE, TRANSLATED, ProviderError, parse_providers, probe,
                       providers_config)
from report import (Measured, Point, ProviderLeg, ProviderResults, Results, Side, VariantResults, render,
                    render_comparison, render_providers, render_variants)
from revision import Checkout, RevisionError, check_imports, check_process_tree, source_env, work_tree_label
from servers import (DEFAULT_GATEWAY_CMD, HOST, MASTER_KEY, REPO, StartError, Started, readiness, served_by,
                     start_gateway, start_upstream, write_config)
from streams import StreamRun, run_streams
from variants import (DEFAULT_POSTGRES_URL, DEFAULT_REDIS_URL, KEY_RPM_LIMIT, Variant, VariantError, check_redis,
                      fresh_postgres_database, generate_key, key_requests, parse_variants)

CHAT_PATH = "/v1/chat/completions"
SAMPLE_BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Which deployment?"}],"max_tokens":8}'
SAMPLE_REQUESTS = 30  # sequential calls per variant, to show which deployments serve
COST_LIMIT, COST_LIMIT_REDIS = 0.05, 0.15  # largest c=64 throughput loss of a variant against the first
# the same for a virtual key with an rpm limit: on the embedded default, and on PostgreSQL and/or Redis (issue 7)
COST_LIMIT_KEY, COST_LIMIT_KEY_SCALE = 0.20, 0.30


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
                            " by load point: 'single', '<strategy>-<N>[-redis]' or 'vkey[-pg][-redis]', e.g."
                            " single,least-busy-3,least-busy-3-redis or single,vkey,vkey-pg-redis"
                            " (ratios against the first)")
    which.add_argument("--providers", metavar="LIST",
                       help="only the streaming load, through one gateway with a model group per upstream wire"
                            " format (openai: OpenAI SSE relayed; anthropic: Anthropic Messages SSE translated),"
                            " e.g. openai,anthropic: gateway CPU per stream and its ratio against the first")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --providers: stream legs per provider, the order rotating each round")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help="general_settings.redis_url of the -redis variants")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL,
                        help="PostgreSQL server on which the vkey-pg variants get a database made for the run"
                             " (CREATE DATABASE, dropped at exit)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    try:
        args.variants = parse_variants(args.variants) if args.variants else None
    except VariantError as exc:
        parser.error(str(exc))
    try:
        args.providers = parse_providers(args.providers) if args.providers else None
    except ProviderError as exc:
        parser.error(str(exc))
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
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
    result = run_wrk(f"http://{HOST}:{gateway.port}{CHAT_PATH}", connections, seconds, gateway.api_key)
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
            run_wrk(f"http://{HOST}:{server.port}{CHAT_PATH}", 16, 1.0, server.api_key)
        points = []
        for i, connections in enumerate(args.connections):
            order = names[i % len(names):] + names[:i % len(names)] if rotate else names
            _log(f"non-streaming, {connections} connections, {args.duration:g} s each for direct, {', '.join(order)}")
            points.append(_measure_point(connections, args.duration, upstream, gateways, order))
        streams = {}
        for name, server in [("direct", upstream), *gateways.items()]:
            _log(f"streaming, {args.streams} streams x {args.chunks} chunks, {name}")
            streams[name] = run_streams(HOST, server.port, args.streams, args.chunks, api_key=server.api_key)
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


def _describe(variant: Variant, redis_url: str, database_url: str | None) -> str:
    count = f"{variant.deployments} deployment{'s' if variant.deployments > 1 else ''}"
    state = f"redis_url {redis_url}" if variant.redis else "no redis_url"
    text = f"{count} of bench-model, {variant.strategy}, {state}"
    if variant.postgres:
        text += f", database_url {database_url}"
    if variant.key:
        text += f", virtual key (rpm_limit {KEY_RPM_LIMIT:,})"
    return text


def _cost_limit(variant: Variant) -> float:
    if variant.key:
        return COST_LIMIT_KEY_SCALE if variant.postgres or variant.redis else COST_LIMIT_KEY
    return COST_LIMIT_REDIS if variant.redis else COST_LIMIT


def bench_variants(args: argparse.Namespace, workdir: Path, children: Children,
                   resources: contextlib.ExitStack) -> tuple[VariantResults, list[str]]:
    """The work tree's gateway once per variant config, all against one upstream. A PostgreSQL
    database made for the run goes on ``resources``, closed after the gateways are stopped."""
    variants: list[Variant] = args.variants
    if any(v.redis for v in variants):
        check_redis(args.redis_url)
    database_url = None
    if any(v.postgres for v in variants):
        database_url = resources.enter_context(fresh_postgres_database(args.postgres_url))
        _log(f"PostgreSQL database for this run: {database_url} (dropped at exit)")
    foreign = ForeignLoad()
    _log(f"starting fake upstream ({args.upstream_procs} process(es)); logs in {workdir}")
    upstream = start_upstream(children, workdir, args.upstream_procs, args.chunks, args.chunk_delay_ms)
    gateways, rss_idle, served = {}, {}, {}
    for variant in variants:
        text = variant.config(HOST, upstream.port, args.redis_url, database_url)
        home = workdir / variant.name  # a folder each: the default SQLite database lives next to the config
        home.mkdir()
        config = write_config(home, upstream.port, text, name=variant.name)
        _log(f"starting gateway {variant.name}: {_describe(variant, args.redis_url, database_url)}")
        gateway, rss_idle[variant.name] = _start_gateway(args, children, workdir, config, variant.name)
        gateways[variant.name] = gateway
        if variant.key:
            gateway.api_key = generate_key(HOST, gateway.port, MASTER_KEY, f"bench-{variant.name}")
            _log(f"{variant.name}: generated a virtual key ({gateway.api_key[:6]}...) with rpm_limit"
                 f" {KEY_RPM_LIMIT:,}; the load sends it")
        served[variant.name] = served_by(gateway.port, SAMPLE_REQUESTS, SAMPLE_BODY, gateway.api_key)
        _log(f"{variant.name}: {readiness(gateways[variant.name].port)}; {SAMPLE_REQUESTS} sequential calls"
             f" served by {served[variant.name]}")
    run = _measure(args, upstream, gateways, foreign, rotate=True)
    names = [v.name for v in variants]
    describe = {v.name: _describe(v, args.redis_url, database_url) for v in variants}
    if any(v.key for v in variants):
        time.sleep(1.5)  # the spend writers' last batches
    for variant in variants:  # the load went out with the key: its spend rows say so
        if variant.key:
            gateway = gateways[variant.name]
            counted = key_requests(HOST, gateway.port, MASTER_KEY, gateway.api_key)
            shown = f"{counted:,}" if isinstance(counted, int) else counted
            describe[variant.name] += f"; requests on the key after the run: {shown}"
    results = VariantResults(
        command=shlex.join(sys.orig_argv), label=work_tree_label(REPO), variants=names,
        describe=describe, points=run.points,
        streams_direct=run.streams["direct"], streams={n: run.streams[n] for n in names},
        stream_count=args.streams, chunks=args.chunks, rss_idle=rss_idle,
        rss_peak={n: max(run.peaks[n], rss_idle[n]) for n in names},
        first_200={n: gateways[n].first_200 for n in names},
        readiness={n: readiness(gateways[n].port) for n in names}, served=served, workers=args.workers,
        background_cores=run.background_cores,
        cost_limits={v.name: _cost_limit(v) for v in variants})
    return results, _problems(run.points, run.streams)


def _stream_leg(args: argparse.Namespace, upstream: Started, gateway: Started, provider: str,
                model: str, round_: int) -> ProviderLeg:
    """One provider's streams, with the gateway's and the upstream's CPU while they ran."""
    gw_cpu, up_cpu = cpu_seconds(tree(gateway.proc.pid)), cpu_seconds(tree(upstream.proc.pid))
    run = run_streams(HOST, gateway.port, args.streams, args.chunks, api_key=gateway.api_key, model=model)
    # rescan: a worker recycled mid-leg is in the master's cutime, a new one is in the tree
    gw_cpu = cpu_seconds(tree(gateway.proc.pid)) - gw_cpu
    up_cpu = cpu_seconds(tree(upstream.proc.pid)) - up_cpu
    return ProviderLeg(provider, round_, run, gw_cpu, up_cpu)


def bench_providers(args: argparse.Namespace, workdir: Path, children: Children) -> tuple[ProviderResults, list[str]]:
    """The streaming load through one gateway, once per provider's model group, ``--rounds`` times."""
    providers = args.providers
    foreign = ForeignLoad()
    _log(f"starting fake upstream ({args.upstream_procs} process(es)); logs in {workdir}")
    upstream = start_upstream(children, workdir, args.upstream_procs, args.chunks, args.chunk_delay_ms)
    config = write_config(workdir, upstream.port, providers_config(HOST, upstream.port, providers, MASTER_KEY),
                          name="providers")
    describe = {p.name: p.describe(HOST, upstream.port) for p in providers}
    _log("starting gateway: " + "; ".join(f"{name} {text}" for name, text in describe.items()))
    gateway, rss_idle = _start_gateway(args, children, workdir, config, "gateway")
    for provider in providers:
        _log(f"{provider.name}: a call to {provider.group} answered {probe(HOST, gateway.port, provider, MASTER_KEY)!r}")
    sampler = RssSampler(gateway.proc.pid)
    sampler.start()
    try:
        warm = min(args.streams, 20)
        for provider in providers:
            _log(f"warm-up: {warm} streams through {provider.name}")
            failures = run_streams(HOST, gateway.port, warm, args.chunks, model=provider.group).failures
            if failures:
                raise Broken(f"{provider.name} warm-up: {len(failures)}/{warm} streams failed, e.g. {failures[0]};"
                             f" see {gateway.log}")
        _log(f"streaming, {args.streams} streams x {args.chunks} chunks, direct (OpenAI SSE)")
        direct = run_streams(HOST, upstream.port, args.streams, args.chunks)
        legs = []
        names = [p.name for p in providers]
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                time.sleep(0.2)  # let the previous leg's sockets close
                _log(f"round {round_ + 1}/{args.rounds}: {args.streams} streams x {args.chunks} chunks via {name}")
                legs.append(_stream_leg(args, upstream, gateway, name, PROVIDERS[name].group, round_ + 1))
                _ensure_alive(upstream, gateway)
    finally:
        peak = sampler.stop()
    background = foreign.cores(sum(cpu_seconds(tree(s.proc.pid)) for s in (upstream, gateway)))
    results = ProviderResults(
        command=shlex.join(sys.orig_argv), label=work_tree_label(REPO), providers=names, describe=describe,
        streams_direct=direct, legs=legs, stream_count=args.streams, chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms, rounds=args.rounds, rss_idle=rss_idle, rss_peak=max(peak, rss_idle),
        first_200=gateway.first_200, workers=args.workers, background_cores=background, cpu_limit=CPU_LIMIT,
        target=(REFERENCE, TRANSLATED))
    runs = {"direct": direct} | {f"{leg.provider} round {leg.round}": leg.run for leg in legs}
    return results, _problems([], runs)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _terminate)
    began = time.perf_counter()
    if shutil.which("wrk") is None and not args.providers:
        print("BROKEN: wrk is not on PATH; install it, e.g. `apt-get install -y wrk`", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="shin-gateway-bench-"))
    children = Children()
    resources = contextlib.ExitStack()  # closed after the children stop: a database they used
    checkout = None
    keep_logs = True
    try:
        if args.variants:
            variant_results, problems = bench_variants(args, workdir, children, resources)
            print(render_variants(variant_results))
        elif args.providers:
            provider_results, problems = bench_providers(args, workdir, children)
            print(render_providers(provider_results))
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
    except (StartError, Broken, LoadError, RevisionError, VariantError, ProviderError) as exc:
        print(f"BROKEN: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        children.stop_all()  # before removing the checkout the baseline gateway runs in
        try:
            resources.close()
        except Exception as exc:  # noqa: BLE001 - a clean-up failure must not hide the run's result
            print(f"clean-up failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if checkout is not None:
            checkout.remove()
        if keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"wall-clock time {time.perf_counter() - began:.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
