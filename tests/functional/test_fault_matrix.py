"""The fault matrix (issue 5): a real gateway, 2 gevent workers, in front of an upstream that misbehaves.

Each row makes the fault upstream (fault_upstream.py) fail one way — refuse,
reset mid-body, hang before the head or mid-stream, drip bytes, send 300 MB or
a 200 MB SSE line, an HTML 502, truncated JSON, `[DONE]` then silence, 429s
with every `Retry-After` form, usage of the wrong type, a 200 JSON error body
to a stream, a 5xx full of stack trace — and checks, as CONTRACT §3 and the
hardening plan promise:
  * the status and the OpenAI error body (or the in-band error event) and its code,
  * the time bound (the deadline, `timeout` 2 s / `stream_timeout` 1.5 s, + slack),
  * upstream attempts (1 + num_retries at most) and that the gateway let go of the
    upstream connection (it stops reading a 300 MB body, closes a silent one),
  * both workers' RSS, peak during the row and after it, stays bounded,
  * no worker died, and fresh requests, JSON and stream, all succeed afterwards.
All problems of a row are collected and reported together.
"""
from __future__ import annotations

import json
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .fault_upstream import HTML_LEAKS, JSON_ERROR_KEPT, TRACE_LEAKS, FaultUpstream
from .gateway_process import GatewayProcess
from .wire import SSEResponse, assert_no_leak, assert_openai_error, assert_sse_framing, chat_body, spec_check

CHAT = "/v1/chat/completions"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
DEADLINE = 2.0            # `timeout` of every fault model
STREAM_TIMEOUT = 1.5      # `stream_timeout` of every fault model
SLACK = 2.0               # the machine is shared and loaded
BOUND = DEADLINE + SLACK
MB = 1 << 20
RSS_AFTER = 64 * MB       # a worker's RSS after a row, above its baseline at module start
RSS_PEAK = 128 * MB       # a worker's RSS during a row, above its value when the row started
READ_CAP = 6 * MB         # a client here never takes more than this from the gateway
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Row:
    id: str
    model: str                          # the client's model name = the upstream model name
    stream: bool = False
    status: int = 502                   # for error rows: the JSON error's status
    type: str = "api_error"
    code: str | None = "upstream_error"
    kind: str = "error"                 # error | inband | success | done
    bound: float = BOUND                # seconds until the answer is complete
    at_least: float = 0.0               # …and not before (a timeout must not fire early)
    gap: tuple[float, float] | None = None   # inband: seconds from the last content event to the error
    attempts: tuple[int, int] | None = (1, 2)   # upstream requests per client request
    retry_after: tuple[int, int] | None = None  # the Retry-After the client gets, inclusive range
    kept: str | None = None             # the error message keeps this (upstream text passed on)
    absent: tuple[str, ...] = ()        # the response never contains these
    released: bool = False              # the gateway closed every upstream connection of the row
    max_sent: int | None = None         # bytes the upstream got to write per attempt before that
    storm: int = 1                      # concurrent JSON requests (plus one stream request if > 1)
    include_usage: bool = False


TIMEOUT_504 = dict(status=504, code="upstream_timeout", at_least=DEADLINE - 0.2, released=True)
MID_STREAM_TIMEOUT = dict(stream=True, kind="inband", code="upstream_timeout",
                          gap=(STREAM_TIMEOUT - 0.3, STREAM_TIMEOUT + SLACK), released=True)
RATE_LIMITED = dict(status=429, type="rate_limit_error", code="rate_limit_exceeded", storm=4)

ROWS = [
    # nothing listening on the port
    Row("refused-json", "refused", attempts=None),
    Row("refused-stream", "refused", stream=True, attempts=None),
    # RST after a third of the JSON body / after two content events
    Row("reset-mid-body", "fault-reset"),
    Row("reset-mid-stream", "fault-reset", stream=True, kind="inband"),
    # silent before the status line: 504 at the deadline, retries included
    Row("hang-before-headers-json", "fault-hang-headers", **TIMEOUT_504),
    Row("hang-before-headers-stream", "fault-hang-headers", stream=True, **TIMEOUT_504),
    # a byte every 100 ms: each read succeeds, the deadline still holds
    Row("drip-headers", "fault-drip-headers", **TIMEOUT_504),
    Row("drip-body", "fault-drip", **TIMEOUT_504),
    Row("drip-before-first-event", "fault-drip", stream=True, **TIMEOUT_504),
    # after the first byte: stream_timeout bounds the gap between whole events
    Row("hang-mid-stream", "fault-hang-stream", **MID_STREAM_TIMEOUT),
    Row("drip-mid-stream", "fault-drip-stream", **MID_STREAM_TIMEOUT),
    # size caps: 32 MB non-stream body, 4 MB SSE line, 1 MB / 256 events read ahead
    Row("huge-body-300mb", "fault-huge-body", released=True, max_sent=100 * MB),
    Row("huge-body-300mb-chunked", "fault-huge-body-chunked", released=True, max_sent=100 * MB),
    Row("huge-body-300mb-gzip", "fault-huge-body-gzip"),
    Row("huge-sse-line-200mb", "fault-huge-sse-line", stream=True, released=True, max_sent=100 * MB),
    Row("huge-sse-line-200mb-mid-stream", "fault-huge-sse-line-mid", stream=True, kind="inband",
        released=True, max_sent=100 * MB),
    Row("sse-flood-before-content", "fault-sse-flood", stream=True, released=True),
    # answers that are not OpenAI answers
    Row("html-502-json", "fault-html-502", attempts=(2, 2), absent=HTML_LEAKS),
    Row("html-502-stream", "fault-html-502", stream=True, attempts=(2, 2), absent=HTML_LEAKS),
    Row("truncated-json", "fault-truncated-json"),
    Row("truncated-json-event", "fault-truncated-json", stream=True),
    # [DONE] relayed at once, the silent upstream connection let go
    Row("done-then-silence", "fault-done-silence", stream=True, kind="done", status=200, released=True),
    # 429 storms, one per Retry-After form; Retry-After ≤ 5 s is waited for, retries within the deadline
    Row("429-retry-after-seconds", "fault-429-seconds", attempts=(2, 2), retry_after=(1, 1), at_least=0.9,
        **RATE_LIMITED),
    Row("429-retry-after-past-deadline", "fault-429-overdeadline", attempts=(1, 1), retry_after=(3, 3),
        **RATE_LIMITED),
    Row("429-retry-after-http-date", "fault-429-date", attempts=(1, 1), retry_after=(27, 31), **RATE_LIMITED),
    Row("429-retry-after-past-date", "fault-429-pastdate", attempts=(2, 2), retry_after=(1, 5), **RATE_LIMITED),
    Row("429-retry-after-negative", "fault-429-negative", attempts=(2, 2), retry_after=(1, 5), **RATE_LIMITED),
    Row("429-retry-after-huge", "fault-429-huge", attempts=(1, 1), retry_after=(300, 300), **RATE_LIMITED),
    Row("429-retry-after-inf", "fault-429-inf", attempts=(2, 2), retry_after=(1, 300), **RATE_LIMITED),
    Row("429-retry-after-nan", "fault-429-nan", attempts=(2, 2), retry_after=(1, 300), **RATE_LIMITED),
    Row("429-retry-after-missing", "fault-429-missing", attempts=(2, 2), retry_after=(1, 300), **RATE_LIMITED),
    # usage fields of the wrong type never make a good answer an error
    *[Row(f"usage-{kind}-json", f"fault-usage-{kind}", kind="success", status=200, attempts=(1, 1))
      for kind in ("str", "null", "dict", "list", "text", "huge")],
    *[Row(f"usage-{kind}-stream", f"fault-usage-{kind}", stream=True, kind="success", status=200,
          attempts=(1, 1), include_usage=True) for kind in ("str", "dict", "list", "text")],
    # a 200 `application/json` error body to a stream request: mapped by its status, message kept (redacted)
    Row("json-error-429-to-stream", "fault-json-error-429", stream=True, status=429, type="rate_limit_error",
        code="rate_limit_exceeded", retry_after=(1, 300), kept=JSON_ERROR_KEPT[429]),
    Row("json-error-400-to-stream", "fault-json-error-400", stream=True, status=400,
        type="invalid_request_error", code=..., attempts=(1, 1), kept=JSON_ERROR_KEPT[400]),
    Row("json-error-500-to-stream", "fault-json-error-500", stream=True),
    # upstream 5xx text is summarised: no stack trace, file path or internal host name
    Row("5xx-stack-trace-json", "fault-5xx-trace", attempts=(2, 2), absent=TRACE_LEAKS),
    Row("5xx-stack-trace-stream", "fault-5xx-trace", stream=True, attempts=(2, 2), absent=TRACE_LEAKS),
    Row("5xx-stack-trace-text", "fault-5xx-trace-text", attempts=(2, 2), absent=TRACE_LEAKS),
]


# --- the gateway under test ------------------------------------------------------------------------

def fault_config(upstream: FaultUpstream) -> str:
    entries = []
    for model in sorted({row.model for row in ROWS} - {"refused"}):
        entries.append(f"""
          - model_name: {model}
            litellm_params:
              model: openai/{model}
              api_base: {upstream.base_url}
              api_key: os.environ/TEST_UPSTREAM_KEY
              timeout: {DEADLINE}
              stream_timeout: {STREAM_TIMEOUT}""")
    entries.append(f"""
          - model_name: refused
            litellm_params:
              model: openai/refused
              api_base: {upstream.refused_url}
              api_key: os.environ/TEST_UPSTREAM_KEY
              timeout: {DEADLINE}
              stream_timeout: {STREAM_TIMEOUT}""")
    entries.append(f"""
          - model_name: ok
            litellm_params:
              model: openai/ok
              api_base: {upstream.base_url}
              api_key: os.environ/TEST_UPSTREAM_KEY
              timeout: 10
              stream_timeout: 10""")
    # cooldown_time 0: no row cools its deployment down (not even a long Retry-After or a 401),
    # so upstream attempts count exactly; cooldowns have their own tests (test_router*.py)
    return textwrap.dedent("model_list:" + "".join(entries)) + textwrap.dedent(f"""
        router_settings:
          num_retries: 1
          cooldown_time: 0
        general_settings:
          master_key: {MASTER_KEY}
        """)


@dataclass
class Bench:
    gateway: GatewayProcess
    upstream: FaultUpstream
    baseline: dict[int, int] = field(default_factory=dict)   # worker pid → VmRSS bytes at module start


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    upstream = FaultUpstream(api_key=UPSTREAM_KEY).start()
    path = tmp_path_factory.mktemp("fault-matrix") / "config.yaml"
    path.write_text(fault_config(upstream))
    gateway = GatewayProcess(path, workers=2, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    try:
        gateway.start()
        problems = follow_up(gateway, 16)        # warm both workers up before the baseline
        assert not problems, problems
        pids = gateway.worker_pids()
        assert len(pids) == 2, pids
        yield Bench(gateway, upstream, {pid: rss(pid) for pid in pids})
    finally:
        gateway.stop()
        upstream.stop()


# --- clients -------------------------------------------------------------------------------------------

class BoundedSSE(SSEResponse):
    """SSEResponse that refuses to take more than READ_CAP bytes or `limit` seconds from the gateway."""
    limit = 30.0

    def _more(self) -> bool:
        if time.monotonic() - self.sent_at > self.limit:
            raise AssertionError(f"the answer was not complete after {self.limit:.0f}s")
        data = self.sock.recv(65536)
        self.received = getattr(self, "received", 0) + len(data)
        if self.received > READ_CAP:
            raise AssertionError(f"the gateway sent more than {READ_CAP // MB} MB")
        self._buffer += data
        return bool(data)


class Reply:
    """The parts of a requests.Response that wire.assert_openai_error reads."""

    def __init__(self, response: SSEResponse):
        self.status_code = response.status
        self.headers = CaseInsensitiveDict(response.headers)
        self.content = response.body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


@dataclass
class Outcome:
    tag: str
    stream: bool
    response: SSEResponse | None = None
    elapsed: float = 0.0          # request sent → answer complete (or the failure)
    ended_at: float = 0.0         # monotonic time the answer was complete
    failure: str | None = None    # the exchange itself broke (timeout, cap, closed early)


def exchange(gateway: GatewayProcess, row: Row, *, stream: bool) -> Outcome:
    tag = f"{row.id}-{uuid.uuid4().hex[:10]}"
    body = chat_body(row.model, tag, **({"stream": True} if stream else {}))
    if row.include_usage:
        body["stream_options"] = {"include_usage": True}
    outcome = Outcome(tag, stream)
    started = time.monotonic()
    try:
        response = BoundedSSE.open(gateway.url, CHAT, body, AUTH, timeout=row.bound + 3, read_head=False)
        response.limit = row.bound + 5
        outcome.response = response
        try:
            response._read_head()
            if response.status == 200 and "event-stream" in (response.header("content-type") or ""):
                response.read_all()
            else:
                response.read_body()
        finally:
            response.close()
    except (OSError, AssertionError, ValueError) as exc:
        outcome.failure = f"{type(exc).__name__}: {exc}"
    outcome.ended_at = time.monotonic()
    outcome.elapsed = outcome.ended_at - started
    return outcome


def follow_up(gateway: GatewayProcess, count: int = 8) -> list[str]:
    """`count` fresh connections at once, half JSON, half stream, to a healthy model: all must succeed."""
    def one(i: int) -> str | None:
        tag = f"follow-up-{i}-{uuid.uuid4().hex[:8]}"
        stream = i % 2 == 1
        try:
            response = requests.post(f"{gateway.url}{CHAT}", json=chat_body("ok", tag, stream=stream),
                                     headers={**AUTH, "Connection": "close"}, timeout=10)
        except requests.RequestException as exc:
            return f"follow-up {'stream' if stream else 'json'}: {type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"follow-up {'stream' if stream else 'json'}: {response.status_code} {response.text[:200]}"
        if stream:
            if not response.text.endswith("data: [DONE]\n\n") or "tok4" not in response.text:
                return f"follow-up stream incomplete: {response.text[-200:]!r}"
        elif response.json()["choices"][0]["message"]["content"] != f"echo: {tag}":
            return f"follow-up json wrong answer: {response.text[:200]}"
        return None

    with ThreadPoolExecutor(max_workers=count) as pool:
        return [p for p in pool.map(one, range(count)) if p]


# --- memory ---------------------------------------------------------------------------------------------

def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRSS:
    """Samples the workers' VmRSS every 10 ms while a row runs."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.start = {pid: rss(pid) for pid in pids}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss(pid))

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- the checks -----------------------------------------------------------------------------------------

class Problems(list):
    def check(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AssertionError as exc:
            self.append(f"{what}: {exc}")
        except Exception as exc:   # a malformed answer (bad JSON…) is a finding too
            self.append(f"{what}: {type(exc).__name__}: {exc}")
        return None


def check_error(row: Row, outcome: Outcome) -> None:
    assert outcome.failure is None, outcome.failure
    reply = Reply(outcome.response)
    error = assert_openai_error(reply, row.status, row.type, code=row.code)
    for leak in row.absent:
        assert leak not in reply.text, f"the response carries {leak!r}: {reply.text[:400]}"
    if row.kept:
        assert row.kept in error["message"], f"the upstream's message was lost: {error['message']!r}"
    if row.status in (429, 503):
        value = reply.headers.get("Retry-After")
        assert value is not None and value.isdigit() and int(value) >= 1, \
            f"{row.status} without a valid Retry-After: {value!r}"
        if row.retry_after:
            low, high = row.retry_after
            assert low <= int(value) <= high, f"Retry-After {value}, want {low}..{high}"


def check_inband(row: Row, outcome: Outcome) -> None:
    assert outcome.failure is None, outcome.failure
    response = outcome.response
    assert response.status == 200, (response.status, response.body[:300])
    assert "event-stream" in (response.header("content-type") or ""), response.headers
    events = response.events
    assert events, "no events at all"
    assert all(e.raw != DONE for e in events), "a cut stream ended with [DONE]"
    last = events[-1].json()
    assert isinstance(last, dict) and set(last) == {"error"}, f"the stream did not end with an error event: {last}"
    error = last["error"]
    assert error.get("type") == "api_error" and error.get("code") == row.code and "param" in error \
        and isinstance(error.get("message"), str) and error["message"], error
    content = [e for e in events[:-1] if _has_content(e.json())]
    assert content, "no content event before the error"
    for event in events[:-1]:
        chunk = event.json()
        assert "error" not in chunk, f"more than one error event: {chunk}"
        spec_check("CreateChatCompletionStreamResponse", chunk)
    assert_no_leak(response.body.decode("utf-8", "replace"))
    if row.gap:
        gap = events[-1].at - content[-1].at
        assert row.gap[0] <= gap <= row.gap[1], \
            f"error event {gap:.2f}s after the last content event, want {row.gap[0]:.2f}..{row.gap[1]:.2f}s"


def _has_content(chunk: dict) -> bool:
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ())


def check_success(row: Row, outcome: Outcome) -> None:
    assert outcome.failure is None, outcome.failure
    response = outcome.response
    assert response.status == 200, (response.status, response.body[:400])
    if not outcome.stream:
        body = json.loads(response.body)
        assert body["choices"][0]["message"]["content"] == f"echo: {outcome.tag}", body
        spec_check("CreateChatCompletionResponse", body)   # bad usage counts are cleaned, never passed on
        return
    assert "event-stream" in (response.header("content-type") or ""), response.headers
    assert response.events and response.events[-1].raw == DONE, response.body[-300:]
    assert sum(e.raw == DONE for e in response.events) == 1, response.body[-300:]
    text = ""
    for event in response.events[:-1]:
        chunk = event.json()
        assert "error" not in chunk, chunk
        spec_check("CreateChatCompletionStreamResponse", chunk)
        text += "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or ())
    assert text == "tok0 tok1 tok2 ", f"content changed: {text!r}"


def check_done(row: Row, outcome: Outcome, upstream: FaultUpstream) -> None:
    assert outcome.failure is None, outcome.failure
    response = outcome.response
    assert_sse_framing(response)
    [record] = upstream.requests_for(row.model, outcome.tag)
    sent = record.marks["done"]
    done_at = response.events[-1].at
    assert done_at - sent < 1.0, f"[DONE] reached the client {done_at - sent:.2f}s after the upstream sent it"
    assert outcome.ended_at - sent < 1.0, \
        f"the response ended {outcome.ended_at - sent:.2f}s after the upstream's [DONE]"
    wait_until(lambda: record.ended_at is not None, sent + 2.0)
    assert record.ended_at is not None and record.peer_closed, \
        "the gateway kept the upstream connection open after [DONE]"
    assert record.ended_at - sent <= 0.25 + 1.0, \
        f"the gateway closed the silent upstream connection {record.ended_at - sent:.2f}s after [DONE]"


def check_upstream(row: Row, outcomes: list[Outcome], upstream: FaultUpstream) -> None:
    """Attempts per client request; connections let go; bytes written before the gateway hung up."""
    for outcome in outcomes:
        records = upstream.requests_for(row.model, outcome.tag)
        if row.attempts:
            low, high = row.attempts
            assert low <= len(records) <= high, \
                f"{len(records)} upstream attempts for one {'stream' if outcome.stream else 'JSON'} " \
                f"request, want {low}..{high}"
        for record in records:
            if row.released:
                wait_until(lambda r=record: r.ended_at is not None, outcome.ended_at + 1.5)
                assert record.ended_at is not None, \
                    f"the gateway still holds the upstream connection {time.monotonic() - outcome.ended_at:.1f}s " \
                    "after its answer"
                assert record.peer_closed, \
                    f"the gateway read the upstream's whole answer ({record.sent / MB:.0f} MB) instead of letting go"
                assert record.ended_at <= outcome.ended_at + 1.0, \
                    f"the gateway closed the upstream connection {record.ended_at - outcome.ended_at:.2f}s " \
                    "after its answer"
            if row.max_sent is not None:
                assert record.sent <= row.max_sent, \
                    f"the upstream wrote {record.sent / MB:.0f} MB before the gateway hung up"


def wait_until(predicate, deadline: float) -> None:
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


# --- the matrix ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_fault_row(bench: Bench, row: Row):
    gateway, upstream = bench.gateway, bench.upstream
    pids = sorted(gateway.worker_pids())
    log_start = gateway.log_path.stat().st_size
    problems = Problems()
    with PeakRSS(pids) as memory:
        if row.storm > 1:
            with ThreadPoolExecutor(max_workers=row.storm) as pool:
                outcomes = list(pool.map(lambda _: exchange(gateway, row, stream=False), range(row.storm)))
            outcomes.append(exchange(gateway, row, stream=True))
        else:
            outcomes = [exchange(gateway, row, stream=row.stream)]
        for outcome in outcomes:
            label = "stream" if outcome.stream else "json"
            check = {"error": check_error, "inband": check_inband, "success": check_success}.get(row.kind)
            if check is not None:
                problems.check(f"{label} answer", check, row, outcome)
            else:
                problems.check(f"{label} answer", check_done, row, outcome, upstream)
            if outcome.elapsed > row.bound:
                problems.append(f"{label}: took {outcome.elapsed:.2f}s, bound {row.bound:.1f}s")
            if outcome.elapsed < row.at_least:
                problems.append(f"{label}: answered after {outcome.elapsed:.2f}s, before {row.at_least:.1f}s")
        problems.check("upstream", check_upstream, row, outcomes, upstream)
    after = {pid: rss(pid) for pid in pids}
    for pid in pids:
        if memory.peak[pid] - memory.start[pid] > RSS_PEAK:
            problems.append(f"worker {pid} RSS peaked {(memory.peak[pid] - memory.start[pid]) / MB:.0f} MB "
                            "above its value at the start of the row")
        baseline = bench.baseline.get(pid) or memory.start[pid]
        if after[pid] - baseline > RSS_AFTER:
            problems.append(f"worker {pid} RSS is {(after[pid] - baseline) / MB:.0f} MB above its baseline "
                            "after the row")
    problems.extend(follow_up(gateway))
    now = sorted(gateway.worker_pids())
    if now != pids:
        problems.append(f"worker processes changed from {pids} to {now} (a worker died)")
        bench.baseline.update({pid: rss(pid) for pid in now if pid not in bench.baseline})
    summary = "; ".join(f"{o.elapsed:.2f}s {o.response.status if o.response else '-'}" for o in outcomes)
    peaks = ", ".join(f"{(memory.peak[pid] - memory.start[pid]) / MB:+.0f}" for pid in pids)
    afters = ", ".join(f"{(after[pid] - (bench.baseline.get(pid) or memory.start[pid])) / MB:+.0f}" for pid in pids)
    print(f"{row.id}: {summary}; worker RSS peak {peaks} MB, after {afters} MB")
    if problems:
        with open(gateway.log_path, "rb") as log:
            log.seek(log_start)
            tail = log.read().decode("utf-8", "replace").splitlines()[-15:]
        raise AssertionError(f"row {row.id} ({summary}):\n  - " + "\n  - ".join(problems)
                             + ("\ngateway log of the row (last lines):\n" + "\n".join(tail)[-2000:] if tail else ""))
