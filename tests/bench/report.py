"""Turn measurements into the printed table and the target verdicts.

Targets are reported as PASS/MISS next to the measured figure and never change
the exit code: a slow build is information for whoever reads the table, while
a broken run (non-2xx, cut streams, dead processes) is what fails the runner.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

from loadgen import WrkResult
from streams import StreamRun

MB = 1_000_000  # decimal megabytes, the stricter reading of "150 MB"
NOISY_CORES = 0.1  # foreign CPU above this average makes the comparison unreliable


@dataclass
class Point:
    """One concurrency level, direct and through the gateway (and the baseline gateway)."""

    connections: int
    direct: WrkResult
    gateway: WrkResult
    gateway_cpu_ms_per_req: float
    upstream_cpu_pct: float  # of one core, during the gateway run: shows it was not the bottleneck
    baseline: WrkResult | None = None  # with --baseline: the gateway of that revision
    baseline_cpu_ms_per_req: float = float("nan")
    baseline_upstream_cpu_pct: float = float("nan")


@dataclass
class Results:
    points: list[Point]
    streams_direct: StreamRun
    streams_gateway: StreamRun
    streams: int
    chunks: int
    rss_idle: int
    rss_peak: int
    first_200: float
    workers: int
    background_cores: float  # CPU used by other processes during the run; > 0.1 means noisy figures
    # with --baseline only: the same figures for the gateway of that revision
    command: str = ""
    baseline_label: str = ""
    current_label: str = ""
    streams_baseline: StreamRun | None = None
    baseline_rss_idle: int = 0
    baseline_rss_peak: int = 0
    baseline_first_200: float = 0.0


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _stream_rows(runs: list, width: int) -> list[str]:
    """The streaming table: a header, then one row per run; the first run is the direct one."""
    head = f"{'':>{width}} | {'TTFB p50':>8} {'TTFB p99':>8} | {'total s':>7} {'vs direct':>9} | {'complete':>8}"
    rows = [head, "-" * len(head)]
    direct_total = runs[0][1].total
    for index, (name, run) in enumerate(runs):
        p50, p99 = _ttfb_ms(run)
        ok = len(run.results) - len(run.failures)
        vs = "" if index == 0 else f"{(_ratio(run.total, direct_total) - 1) * 100:+.1f}%"
        rows.append(f"{name:>{width}} | {p50:>8.1f} {p99:>8.1f} | {run.total:>7.3f} {vs:>9}"
                    f" | {f'{ok}/{len(run.results)}':>8}")
    return rows


def _ttfb_ms(run: StreamRun) -> tuple[float, float]:
    ttfb = [r.ttfb * 1000 for r in run.results if r.ttfb is not None]
    return (statistics.median(ttfb), _pct(ttfb, 99)) if ttfb else (float("nan"), float("nan"))


def _point(points: list[Point], connections: int) -> Point | None:
    return next((p for p in points if p.connections == connections), None)


def targets(res: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, passed) rows; passed is None when not measured."""
    rows: list[tuple[str, str, bool | None]] = []
    c64, c1 = _point(res.points, 64), _point(res.points, 1)
    if c64:
        rows.append((">= 2,000 gateway req/s at c=64", f"{c64.gateway.rps:,.0f} req/s", c64.gateway.rps >= 2000))
        cpu = c64.gateway_cpu_ms_per_req
        rows.append(("<= 1 ms gateway CPU per request (c=64)", f"{cpu:.3f} ms", cpu <= 1.0))
    else:
        rows.append((">= 2,000 gateway req/s at c=64", "c=64 not run", None))
    if c1:
        added = c1.gateway.p50_ms - c1.direct.p50_ms
        rows.append(("<= +1.5 ms added p50 latency at c=1", f"{added:+.2f} ms", added <= 1.5))
    else:
        rows.append(("<= +1.5 ms added p50 latency at c=1", "c=1 not run", None))
    direct, gateway = res.streams_direct.total, res.streams_gateway.total
    rows.append((f"{res.streams} streams within 10% of direct (total)",
                 f"{gateway:.3f} s vs {direct:.3f} s ({(gateway / direct - 1) * 100:+.1f}%)",
                 gateway <= direct * 1.10))
    rows.append(("<= 150 MB RSS, all gateway processes, load", f"{res.rss_peak / MB:.1f} MB", res.rss_peak <= 150 * MB))
    rows.append(("first 200 within 1 s of start", f"{res.first_200:.3f} s", res.first_200 <= 1.0))
    return rows


def render(res: Results) -> str:
    out = []
    if res.background_cores > NOISY_CORES:
        out.append(f"WARNING: other processes used {res.background_cores:.2f} cores on average during the run;"
                   " every figure below is skewed by that load.\n")
    out.append("Non-streaming POST /v1/chat/completions (wrk; latency in ms)")
    head = (f"{'conc':>5} | {'direct rps':>10} {'p50':>7} {'p99':>7} | {'gateway rps':>11} {'p50':>7} {'p99':>7}"
            f" | {'gw/dir':>6} | {'+p50':>8} {'+p99':>8} | {'gw CPU ms/req':>13} | {'upstr CPU':>9}"
            f" | {'non-2xx d/g':>11} | {'sock err d/g':>12}")
    out += [head, "-" * len(head)]
    for p in res.points:
        d, g = p.direct, p.gateway
        out.append(
            f"{p.connections:>5} | {d.rps:>10,.0f} {d.p50_ms:>7.2f} {d.p99_ms:>7.2f} | {g.rps:>11,.0f}"
            f" {g.p50_ms:>7.2f} {g.p99_ms:>7.2f} | {g.rps / d.rps if d.rps else 0:>6.3f}"
            f" | {g.p50_ms - d.p50_ms:>+8.2f} {g.p99_ms - d.p99_ms:>+8.2f} | {p.gateway_cpu_ms_per_req:>13.3f}"
            f" | {p.upstream_cpu_pct:>8.0f}% | {f'{d.non2xx}/{g.non2xx}':>11} | {f'{d.socket_errors}/{g.socket_errors}':>12}")
    out.append("")
    out.append(f"Streaming: {res.streams} concurrent streams x {res.chunks} content chunks (latency in ms)")
    head = f"{'':>8} | {'TTFB p50':>8} {'TTFB p99':>8} | {'total s':>7} | {'complete':>8}"
    out += [head, "-" * len(head)]
    for name, run in (("direct", res.streams_direct), ("gateway", res.streams_gateway)):
        p50, p99 = _ttfb_ms(run)
        ok = len(run.results) - len(run.failures)
        out.append(f"{name:>8} | {p50:>8.1f} {p99:>8.1f} | {run.total:>7.3f} | {f'{ok}/{len(run.results)}':>8}")
    out.append("")
    out.append(f"Gateway processes (master + {res.workers} workers): RSS idle {res.rss_idle / MB:.1f} MB,"
               f" peak under load {res.rss_peak / MB:.1f} MB; time to first 200 {res.first_200:.3f} s")
    out.append(f"Other load on the machine during the run: {res.background_cores:.2f} cores on average")
    out.append("")
    rows = targets(res)
    width = max(len(r[0]) for r in rows)
    out.append("Targets")
    for name, measured, passed in rows:
        verdict = "n/a" if passed is None else ("PASS" if passed else "MISS")
        out.append(f"  {name:<{width}}  {measured:<32} {verdict}")
    return "\n".join(out)


# --- side by side with a revision (--baseline) --------------------------------------------

def baseline_view(res: Results) -> Results:
    """``res`` with the baseline gateway's figures where the gateway's are, for ``targets``."""
    points = [dataclasses.replace(p, gateway=p.baseline, gateway_cpu_ms_per_req=p.baseline_cpu_ms_per_req,
                                  upstream_cpu_pct=p.baseline_upstream_cpu_pct) for p in res.points]
    return dataclasses.replace(res, points=points, streams_gateway=res.streams_baseline,
                               rss_idle=res.baseline_rss_idle, rss_peak=res.baseline_rss_peak,
                               first_200=res.baseline_first_200)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def render_comparison(res: Results) -> str:
    """Direct, baseline revision and work tree side by side, per load point."""
    out = [f"$ {res.command}", "",
           f"baseline: {res.baseline_label}", f"current:  {res.current_label}", ""]
    if res.background_cores > NOISY_CORES:
        out.append(f"WARNING: other processes used {res.background_cores:.2f} cores on average during the run;"
                   " every figure below is skewed by that load.\n")
    out.append("Non-streaming POST /v1/chat/completions (wrk; latency in ms; +p50/+p99 = gateway minus direct;"
               " base = baseline, cur = current)")
    head = (f"{'conc':>5} | {'direct rps':>10} {'p50':>6} {'p99':>6} | {'base rps':>9} {'cur rps':>9}"
            f" {'cur/base':>8} | {'CPU ms/req base':>15} {'cur':>6} | {'base +p50':>9} {'+p99':>8}"
            f" | {'cur +p50':>8} {'+p99':>8} | {'upstr CPU b/c':>13} | {'non-2xx d/b/c':>13}"
            f" | {'sock err d/b/c':>14}")
    out += [head, "-" * len(head)]
    for p in res.points:
        d, b, c = p.direct, p.baseline, p.gateway
        assert b is not None
        out.append(
            f"{p.connections:>5} | {d.rps:>10,.0f} {d.p50_ms:>6.2f} {d.p99_ms:>6.2f} | {b.rps:>9,.0f} {c.rps:>9,.0f}"
            f" {_ratio(c.rps, b.rps):>8.3f} | {p.baseline_cpu_ms_per_req:>15.3f} {p.gateway_cpu_ms_per_req:>6.3f}"
            f" | {b.p50_ms - d.p50_ms:>+9.2f} {b.p99_ms - d.p99_ms:>+8.2f}"
            f" | {c.p50_ms - d.p50_ms:>+8.2f} {c.p99_ms - d.p99_ms:>+8.2f}"
            f" | {f'{p.baseline_upstream_cpu_pct:.0f}%/{p.upstream_cpu_pct:.0f}%':>13}"
            f" | {f'{d.non2xx}/{b.non2xx}/{c.non2xx}':>13}"
            f" | {f'{d.socket_errors}/{b.socket_errors}/{c.socket_errors}':>14}")
    out.append("")
    out.append(f"Streaming: {res.streams} concurrent streams x {res.chunks} content chunks (latency in ms)")
    assert res.streams_baseline is not None
    out += _stream_rows([("direct", res.streams_direct), ("baseline", res.streams_baseline),
                         ("current", res.streams_gateway)], 8)
    out.append("")
    out.append(f"Gateway processes (master + {res.workers} workers), RSS idle / peak under load;"
               " time to first 200:")
    for name, idle, peak, first in (("baseline", res.baseline_rss_idle, res.baseline_rss_peak, res.baseline_first_200),
                                    ("current", res.rss_idle, res.rss_peak, res.first_200)):
        out.append(f"  {name:<8} {idle / MB:6.1f} MB / {peak / MB:6.1f} MB; {first:.3f} s")
    out.append(f"Other load on the machine during the run: {res.background_cores:.2f} cores on average")
    out.append("")
    current, base = targets(res), targets(baseline_view(res))
    width = max(len(r[0]) for r in current)
    out.append(f"{'Targets':<{width + 4}}{'baseline':<39}current")
    for (name, measured, passed), (_, b_measured, b_passed) in zip(current, base, strict=True):
        verdict = "n/a" if passed is None else ("PASS" if passed else "MISS")
        b_verdict = "n/a" if b_passed is None else ("PASS" if b_passed else "MISS")
        out.append(f"  {name:<{width}}  {b_measured:<32} {b_verdict:<4}  {measured:<32} {verdict}")
    return "\n".join(out)


# --- side by side, one gateway per router configuration (--variants) -----------------------

@dataclass
class Side:
    """One gateway's wrk run at one load point."""

    result: WrkResult
    cpu_ms_per_req: float
    upstream_cpu_pct: float  # of one core, during this gateway's run


@dataclass
class Measured:
    """One load point: direct, then every gateway under test, in the order they ran."""

    connections: int
    direct: WrkResult
    sides: dict[str, Side]
    order: list[str]


@dataclass
class VariantResults:
    command: str
    label: str  # what the work tree holds
    variants: list[str]  # in the order given; the first is the reference of every ratio
    describe: dict[str, str]  # variant -> its deployments, strategy and state backend
    points: list[Measured]
    streams_direct: StreamRun
    streams: dict[str, StreamRun]
    stream_count: int
    chunks: int
    rss_idle: dict[str, int]
    rss_peak: dict[str, int]
    first_200: dict[str, float]
    readiness: dict[str, str]  # after the run
    served: dict[str, dict[str, int]]  # deployment id -> requests, from a sequential sample
    workers: int
    background_cores: float
    cost_limits: dict[str, float]  # variant -> largest allowed c=64 throughput loss against the first


def _pooled(points: list[Measured], connections: int, name: str) -> tuple[float, float]:
    """Throughput and CPU ms/request of ``name`` over every repeat of ``connections``."""
    sides = [p.sides[name] for p in points if p.connections == connections]
    requests = sum(s.result.requests for s in sides)
    seconds = sum(s.result.seconds for s in sides)
    cpu = sum(s.cpu_ms_per_req * s.result.requests for s in sides)
    return _ratio(requests, seconds), _ratio(cpu, requests)


def _variant_targets(res: VariantResults) -> list[tuple[str, str, bool | None]]:
    first = res.variants[0]
    rows: list[tuple[str, str, bool | None]] = []
    if not any(p.connections == 64 for p in res.points):
        return [(f"{name}: c=64 throughput vs {first}", "c=64 not run", None) for name in res.variants[1:]]
    base, _ = _pooled(res.points, 64, first)
    for name in res.variants[1:]:
        rps, _ = _pooled(res.points, 64, name)
        limit = res.cost_limits[name]
        ratio = _ratio(rps, base)
        rows.append((f"{name}: c=64 throughput >= {1 - limit:.2f} x {first}",
                     f"{rps:,.0f} vs {base:,.0f} req/s = {ratio:.3f}", ratio >= 1 - limit))
    return rows


def render_variants(res: VariantResults) -> str:
    """Direct and every variant side by side, per load point, ratios against the first variant."""
    first, names = res.variants[0], res.variants
    out = [f"$ {res.command}", "", f"code: {res.label}", "variants (ratios are against the first):"]
    width = max(len(n) for n in names)
    for name in names:
        served = ", ".join(f"{k} {v}" for k, v in sorted(res.served[name].items()))
        out.append(f"  {name:<{width}}  {res.describe[name]}; sequential sample served by: {served}")
    out.append("")
    if res.background_cores > NOISY_CORES:
        out.append(f"WARNING: other processes used {res.background_cores:.2f} cores on average during the run;"
                   " every figure below is skewed by that load.\n")
    out.append("Non-streaming POST /v1/chat/completions (wrk; latency in ms; +p50/+p99 = gateway minus direct;"
               " order = the order the gateways ran in at that point)")
    head = (f"{'conc':>5} | {'direct rps':>10} {'p50':>6} {'p99':>6} | {'variant':<{width}} | {'rps':>8}"
            f" {'ratio':>6} | {'p50':>6} {'p99':>7} {'+p50':>7} {'+p99':>7} | {'CPU ms/req':>10}"
            f" | {'upstr CPU':>9} | {'non-2xx':>7} {'sock err':>8} | order")
    out += [head, "-" * len(head)]
    for p in res.points:
        d, ref = p.direct, p.sides[first].result
        for i, name in enumerate(names):
            s = p.sides[name]
            r = s.result
            lead = (f"{p.connections:>5} | {d.rps:>10,.0f} {d.p50_ms:>6.2f} {d.p99_ms:>6.2f}" if i == 0
                    else f"{'':>5} | {'':>10} {'':>6} {'':>6}")
            out.append(
                f"{lead} | {name:<{width}} | {r.rps:>8,.0f} {_ratio(r.rps, ref.rps):>6.3f}"
                f" | {r.p50_ms:>6.2f} {r.p99_ms:>7.2f} {r.p50_ms - d.p50_ms:>+7.2f} {r.p99_ms - d.p99_ms:>+7.2f}"
                f" | {s.cpu_ms_per_req:>10.3f} | {s.upstream_cpu_pct:>8.0f}% | {r.non2xx:>7} {r.socket_errors:>8}"
                f" | {p.order.index(name) + 1}/{len(p.order)}")
    repeated = sorted({p.connections for p in res.points if sum(q.connections == p.connections
                                                                for q in res.points) > 1})
    if repeated:
        out.append("")
        out.append("Repeated load points pooled (requests / seconds over every repeat; ratio range = lowest and"
                   " highest per-repeat ratio)")
        head = (f"{'conc':>5} | {'runs':>4} | {'variant':<{width}} | {'rps':>8} {'ratio':>6} | {'ratio range':>13}"
                f" | {'CPU ms/req':>10}")
        out += [head, "-" * len(head)]
        for c in repeated:
            runs = [p for p in res.points if p.connections == c]
            base, _ = _pooled(res.points, c, first)
            for i, name in enumerate(names):
                rps, cpu = _pooled(res.points, c, name)
                ratios = [_ratio(p.sides[name].result.rps, p.sides[first].result.rps) for p in runs]
                lead = f"{c:>5} | {len(runs):>4}" if i == 0 else f"{'':>5} | {'':>4}"
                out.append(f"{lead} | {name:<{width}} | {rps:>8,.0f} {_ratio(rps, base):>6.3f}"
                           f" | {f'{min(ratios):.3f}-{max(ratios):.3f}':>13} | {cpu:>10.3f}")
    out.append("")
    out.append(f"Streaming: {res.stream_count} concurrent streams x {res.chunks} content chunks (latency in ms)")
    out += _stream_rows([("direct", res.streams_direct)] + [(n, res.streams[n]) for n in names], max(width, 6))
    out.append("")
    out.append(f"Gateway processes (master + {res.workers} workers), RSS idle / peak under load;"
               " time to first 200; readiness after the run:")
    for name in names:
        out.append(f"  {name:<{width}} {res.rss_idle[name] / MB:6.1f} MB / {res.rss_peak[name] / MB:6.1f} MB;"
                   f" {res.first_200[name]:.3f} s; {res.readiness[name]}")
    out.append(f"Other load on the machine during the run: {res.background_cores:.2f} cores on average")
    out.append("")
    out.append("Targets")
    rows = _variant_targets(res)
    label = max(len(r[0]) for r in rows)
    for name, measured, passed in rows:
        verdict = "n/a" if passed is None else ("PASS" if passed else "MISS")
        out.append(f"  {name:<{label}}  {measured:<36} {verdict}")
    return "\n".join(out)


# --- one gateway, one model group per upstream wire format (--providers) -------------------

@dataclass
class ProviderLeg:
    """One provider's streams in one round, with the CPU spent while they ran."""

    provider: str
    round: int  # 1-based
    run: StreamRun
    gateway_cpu: float  # seconds, master and workers
    upstream_cpu: float  # seconds


@dataclass
class ProviderResults:
    command: str
    label: str  # what the work tree holds
    providers: list[str]  # in the order given; the first is the reference of every ratio
    describe: dict[str, str]  # provider -> its model group, deployment and wire format
    streams_direct: StreamRun  # OpenAI SSE straight from the upstream
    legs: list[ProviderLeg]  # in the order they ran
    stream_count: int
    chunks: int
    chunk_delay_ms: float
    rounds: int
    rss_idle: int
    rss_peak: int
    first_200: float
    workers: int
    background_cores: float
    cpu_limit: float
    target: tuple[str, str]  # (reference, translated) of the CPU target


def _per_stream_ms(legs: list[ProviderLeg], provider: str, attribute: str = "gateway_cpu") -> float:
    """CPU ms per stream of ``provider``, pooled over its legs."""
    mine = [leg for leg in legs if leg.provider == provider]
    return _ratio(sum(getattr(leg, attribute) for leg in mine) * 1000, sum(len(leg.run.results) for leg in mine))


def render_providers(res: ProviderResults) -> str:
    """The streaming load through each provider's group of one gateway: time, CPU per stream, ratio."""
    first, names = res.providers[0], res.providers
    width = max(9, *(len(n) for n in names))
    out = [f"$ {res.command}", "", f"code: {res.label}",
           "providers (one gateway, one model group each, every group on the same fake upstream; ratios are"
           " against the first):"]
    for name in names:
        out.append(f"  {name:<{width}}  {res.describe[name]}")
    out.append("")
    if res.background_cores > NOISY_CORES:
        out.append(f"WARNING: other processes used {res.background_cores:.2f} cores on average during the run;"
                   " every figure below is skewed by that load.\n")
    out.append(f"Streaming: {res.stream_count} concurrent streams x {res.chunks} content chunks,"
               f" {res.chunk_delay_ms:g} ms apart, per leg (latency in ms; gw CPU = utime+stime of the gateway's"
               " master and workers during the leg; ratio = CPU per stream against the first provider's, pooled)")
    head = (f"{'':>{width}} | {'round':>5} | {'TTFB p50':>8} {'TTFB p99':>8} | {'total s':>7} {'vs direct':>9}"
            f" | {'complete':>8} | {'gw CPU s':>8} {'ms/stream':>9} | {'upstr ms/stream':>15}")
    out += [head, "-" * len(head)]
    p50, p99 = _ttfb_ms(res.streams_direct)
    direct_total = res.streams_direct.total
    ok = len(res.streams_direct.results) - len(res.streams_direct.failures)
    out.append(f"{'direct':>{width}} | {'':>5} | {p50:>8.1f} {p99:>8.1f} | {direct_total:>7.3f} {'':>9}"
               f" | {f'{ok}/{len(res.streams_direct.results)}':>8} | {'':>8} {'':>9} | {'':>15}")
    for leg in res.legs:
        run, streams = leg.run, len(leg.run.results)
        p50, p99 = _ttfb_ms(run)
        ok = streams - len(run.failures)
        vs = f"{(_ratio(run.total, direct_total) - 1) * 100:+.1f}%"
        out.append(f"{leg.provider:>{width}} | {leg.round:>5} | {p50:>8.1f} {p99:>8.1f} | {run.total:>7.3f} {vs:>9}"
                   f" | {f'{ok}/{streams}':>8} | {leg.gateway_cpu:>8.2f} {_ratio(leg.gateway_cpu * 1000, streams):>9.2f}"
                   f" | {_ratio(leg.upstream_cpu * 1000, streams):>15.2f}")
    out.append("")
    out.append(f"Gateway CPU per stream, pooled over {res.rounds} round{'s' if res.rounds > 1 else ''}"
               " (ratio range = lowest and highest per-round ratio)")
    head = f"{'':>{width}} | {'ms/stream':>9} {'ratio':>6} | {'ratio range':>13} | {'upstr ms/stream':>15}"
    out += [head, "-" * len(head)]
    base = _per_stream_ms(res.legs, first)
    for name in names:
        per_round = [_ratio(_per_stream_ms([leg for leg in res.legs if leg.round == r], name),
                            _per_stream_ms([leg for leg in res.legs if leg.round == r], first))
                     for r in range(1, res.rounds + 1)]
        mine = _per_stream_ms(res.legs, name)
        out.append(f"{name:>{width}} | {mine:>9.2f} {_ratio(mine, base):>6.3f}"
                   f" | {f'{min(per_round):.3f}-{max(per_round):.3f}':>13}"
                   f" | {_per_stream_ms(res.legs, name, 'upstream_cpu'):>15.2f}")
    out.append("")
    out.append(f"Gateway processes (master + {res.workers} workers): RSS idle {res.rss_idle / MB:.1f} MB,"
               f" peak under load {res.rss_peak / MB:.1f} MB; time to first 200 {res.first_200:.3f} s")
    out.append(f"Other load on the machine during the run: {res.background_cores:.2f} cores on average")
    out.append("")
    out.append("Targets")
    reference, translated = res.target
    name = f"{translated}: gateway CPU per stream <= {res.cpu_limit:g} x {reference}"
    if reference in names and translated in names:
        ref, mine = _per_stream_ms(res.legs, reference), _per_stream_ms(res.legs, translated)
        ratio = _ratio(mine, ref)
        out.append(f"  {name}  {f'{mine:.2f} vs {ref:.2f} ms = {ratio:.3f}':<32} "
                   f"{'PASS' if ratio <= res.cpu_limit else 'MISS'}")
    else:
        out.append(f"  {name}  {f'needs --providers {reference},{translated}':<36} n/a")
    return "\n".join(out)
