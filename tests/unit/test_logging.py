"""gateway/logging.py: one JSON object per line, redacted wherever the secret stands, at the configured level."""
from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.logging import LineFormatter, RequestLog, install
from gateway.redact import Redactor
from gateway.types import Trace, Usage

SECRET = "upstream-secret-key-123"
VIRTUAL = "sk-abcdefghijklmnopqrstuvwxyz012345"


def record(message="hello %s", args=("world",), level=logging.INFO, name="gateway.test", exc_info=None, **extra):
    made = logging.getLogger(name).makeRecord(name, level, __file__, 1, message, args, exc_info, extra=extra)
    return made


def test_a_record_is_one_json_object_with_its_fields():
    line = LineFormatter(Redactor()).format(record(event="cooldown", deployment="d1", seconds=30.0))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "hello world" and parsed["level"] == "info" and parsed["logger"] == "gateway.test"
    assert parsed["event"] == "cooldown" and parsed["deployment"] == "d1" and parsed["seconds"] == 30.0
    assert parsed["ts"].endswith("Z") and len(parsed["ts"]) == len("2026-12-01T05:20:01.123Z")
    assert isinstance(parsed["pid"], int)


@pytest.mark.parametrize("name, event", [("gunicorn.error", "server"), ("py.warnings", "warning"),
                                         ("gateway.x", "log")])
def test_records_without_an_event_get_one_by_their_logger(name, event):
    assert json.loads(LineFormatter(Redactor()).format(record(name=name)))["event"] == event


def test_secrets_are_redacted_in_the_message_the_fields_and_the_traceback():
    formatter = LineFormatter(Redactor([SECRET]))
    try:
        raise RuntimeError(f"upstream said: key {SECRET} and Authorization: Bearer {VIRTUAL}")
    except RuntimeError as exc:
        error = (type(exc), exc, exc.__traceback__)
    line = formatter.format(record(f"calling with {SECRET} via https://user:pass1234@host/v1", (), exc_info=error,
                                   event="x", detail=f"presented {VIRTUAL}", url="redis://:hunter22@redis:6379/0"))
    for leak in (SECRET, VIRTUAL, "pass1234", "hunter22"):
        assert leak not in line
    parsed = json.loads(line)
    assert "RuntimeError" in parsed["exception"] and "***" in parsed["exception"]


def test_secrets_inside_list_and_mapping_fields_are_redacted():
    line = LineFormatter(Redactor([SECRET])).format(record(event="x", groups=["a", SECRET], count=3,
                                                           headers={"Authorization": f"Bearer {VIRTUAL}",
                                                                    SECRET: [SECRET, 1]}))
    assert SECRET not in line and VIRTUAL not in line
    parsed = json.loads(line)
    assert parsed["groups"] == ["a", "***"] and parsed["count"] == 3 and parsed["headers"]["***"] == ["***", 1]


def test_a_secret_that_json_escapes_is_still_redacted():
    tricky = 'quote"and\\slash-secret'
    line = LineFormatter(Redactor([tricky])).format(record(f"it is {tricky}", ()))
    assert tricky not in json.loads(line)["message"]


def test_plain_lines_when_json_logs_is_off():
    line = LineFormatter(Redactor([SECRET]), as_json=False).format(record("using %s", (SECRET,), event="reload",
                                                                          config="/etc/x.yaml"))
    assert line.split(" ", 3)[1:3] == ["INFO", "gateway.test"]
    assert "[reload] using ***" in line and "config=/etc/x.yaml" in line and SECRET not in line


def test_install_routes_every_logger_through_one_handler_at_the_configured_level(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        install(Redactor([SECRET]), "warning")
        install(Redactor([SECRET]), "warning")    # a second app in the process replaces, never doubles
        ours = [h for h in root.handlers if isinstance(h.formatter, LineFormatter)]
        assert len(ours) == 1
        stream = io.StringIO()
        ours[0].setStream(stream)
        logging.getLogger("gateway.request").info("not at warning")
        logging.getLogger("urllib3.connectionpool").warning("retrying with %s", SECRET)
        import warnings
        warnings.warn(f"deprecated thing {SECRET}", UserWarning, stacklevel=1)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["logger"] for line in lines] == ["urllib3.connectionpool", "py.warnings"]
        assert all(SECRET not in json.dumps(line) for line in lines)
    finally:
        logging.captureWarnings(False)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def request_line(trace: Trace, status: int, quiet: bool = False) -> dict:
    logger = logging.getLogger("gateway.request.test")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter(Redactor()))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        RequestLog(logger).write(trace, "POST", "/v1/chat/completions", status, trace.started + 0.25, quiet=quiet)
    finally:
        logger.removeHandler(handler)
    return json.loads(stream.getvalue())


def test_a_model_request_line_says_who_what_how_long_and_how_much():
    trace = Trace(started=100.0, request_id="req-1", model_group="g", deployment_id="d1", key_label="team-a",
                  stream=True, first_byte=100.05, usage=Usage(11, 7, 18), cost=0.0025, retries=1, fallbacks=0)
    line = request_line(trace, 200)
    assert line["event"] == "request" and line["level"] == "info"
    assert {k: line[k] for k in ("request_id", "method", "path", "status", "model_group", "deployment", "key_alias",
                                 "stream", "prompt_tokens", "completion_tokens", "cost", "retries", "fallbacks")} == {
        "request_id": "req-1", "method": "POST", "path": "/v1/chat/completions", "status": 200, "model_group": "g",
        "deployment": "d1", "key_alias": "team-a", "stream": True, "prompt_tokens": 11, "completion_tokens": 7,
        "cost": 0.0025, "retries": 1, "fallbacks": 0}
    assert line["latency_ms"] == 250.0 and line["ttft_ms"] == 50.0
    assert "error_type" not in line


def test_failed_requests_say_why_and_5xx_is_a_warning():
    line = request_line(Trace(started=1.0, request_id="r", error_code="invalid_api_key"), 401)
    assert line["error_type"] == "invalid_api_key" and line["level"] == "info" and "model_group" not in line
    assert request_line(Trace(started=1.0, request_id="r", error_code="upstream_error"), 502)["level"] == "warning"
    assert request_line(Trace(started=1.0, request_id="r"), 200, quiet=True)["level"] == "debug"


def test_the_request_log_is_off_below_its_level():
    logger = logging.getLogger("gateway.request.quiet-test")
    logger.setLevel(logging.WARNING)
    log = RequestLog(logger)
    assert not log.enabled(quiet=False) and not log.enabled(quiet=True)
    logger.setLevel(logging.INFO)
    assert log.enabled(quiet=False) and not log.enabled(quiet=True)


def test_a_line_is_one_line_for_every_reader_even_with_unicode_line_separators():
    line = LineFormatter(Redactor()).format(record("GET %s 404", ("/models/a\u2028b\x85c\u2029d",), event="request",
                                                   path="/models/a\u2028b"))
    assert len(line.splitlines()) == 1
    assert json.loads(line)["message"] == "GET /models/a\u2028b\x85c\u2029d 404"


def test_written_through_the_installed_handler_a_request_line_is_the_same_line():
    trace = Trace(started=100.0, request_id="req-2", model_group="g", deployment_id="d1", key_label=None,
                  usage=Usage(1, 2, 3), cost=0.0, error_code="upstream_error")
    via_logging = request_line(trace, 502)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter(Redactor()))
    RequestLog(logging.getLogger("gateway.request.test"), handler).write(
        trace, "POST", "/v1/chat/completions", 502, trace.started + 0.25)
    direct = json.loads(stream.getvalue())
    assert stream.getvalue().count("\n") == 1
    for line in (via_logging, direct):
        line.pop("ts")
    assert direct == via_logging and direct["level"] == "warning" and direct["event"] == "request"
