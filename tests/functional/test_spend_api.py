"""The spend API on the real gateway (2 gevent workers): /spend/logs with its filters and pages,
/global/spend and /global/spend/report by day × model and × key, agreeing with /key/info."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from .conftest import MASTER_KEY
from .test_keys_api import CALL_COST, call, chat, eventually, generate, start_priced_gateway
from .wire import assert_openai_error

ROW_FIELDS = {"request_id", "api_key", "key_alias", "user", "team_id", "model_group", "model_id",
              "prompt_tokens", "completion_tokens", "total_tokens", "spend", "status", "latency_ms",
              "startTime", "endTime"}
TODAY = datetime.now(timezone.utc).date()
WINDOW = {"start_date": str(TODAY - timedelta(days=1)), "end_date": str(TODAY + timedelta(days=1))}


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    process = start_priced_gateway(upstream, tmp_path_factory.mktemp("spend"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def history(gw):
    """Five priced calls: alpha 2 × priced + 1 × other, beta 1 × priced, the master key 1 × other."""
    alpha = generate(gw, key_alias="alpha", user_id="user-a", team_id="team-a")
    beta = generate(gw, key_alias="beta", user_id="user-b", team_id="team-b")
    calls = [(alpha, "priced"), (alpha, "priced"), (alpha, "other"), (beta, "priced"), (None, "other")]
    request_ids = []
    for key, model in calls:
        request_id = f"spend-{uuid.uuid4().hex[:12]}"
        response = chat(gw, key["key"] if key else MASTER_KEY, model, headers={"x-request-id": request_id})
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == request_id
        request_ids.append(request_id)
        time.sleep(0.01)         # distinct start times: "newest first" is then one order
    assert eventually(lambda: len(call(gw, "GET", "/spend/logs").json()) == 5, 5.0)
    return alpha, beta, request_ids


def logs(gw, **params):
    response = call(gw, "GET", "/spend/logs", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_logs_are_a_plain_list_newest_first(gw, history):
    alpha, beta, request_ids = history
    rows = logs(gw)
    assert [r["request_id"] for r in rows] == request_ids[::-1]
    for row in rows:
        assert set(row) == ROW_FIELDS
        assert row["prompt_tokens"] == 11 and row["completion_tokens"] == 7 and row["total_tokens"] == 18
        assert row["spend"] == pytest.approx(CALL_COST) and row["status"] == 200
        assert row["model_id"] and row["latency_ms"] >= 0
        assert _epoch(row["startTime"]) <= _epoch(row["endTime"]) <= time.time() + 1
    oldest = rows[-1]
    assert oldest["api_key"] == alpha["token"] and oldest["key_alias"] == "alpha"
    assert oldest["user"] == "user-a" and oldest["team_id"] == "team-a" and oldest["model_group"] == "priced"
    assert rows[0]["api_key"] is None and rows[0]["model_group"] == "other"       # the master key's call
    text = call(gw, "GET", "/spend/logs").text
    assert alpha["key"] not in text and beta["key"] not in text


def test_log_filters(gw, history):
    alpha, beta, request_ids = history

    def ids(**params):
        return [r["request_id"] for r in logs(gw, **params)]
    alphas = request_ids[2::-1]
    assert ids(api_key=alpha["key"]) == ids(api_key=alpha["token"]) == ids(key_alias="alpha") == alphas
    assert ids(user_id="user-b") == ids(team_id="team-b") == [request_ids[3]]
    assert ids(model="other") == [request_ids[4], request_ids[2]]
    assert ids(request_id=request_ids[1]) == [request_ids[1]]
    assert ids(api_key=alpha["token"], model="priced") == [request_ids[1], request_ids[0]]
    assert ids(start_date=str(TODAY), end_date=str(TODAY)) == request_ids[::-1]      # end_date: the whole day
    assert ids(end_date=str(TODAY - timedelta(days=1))) == []
    assert ids(start_date=datetime.now(timezone.utc).isoformat()) == []
    assert ids(api_key="sk-no-such-key-at-all") == []


def test_log_pages(gw, history):
    _, _, request_ids = history
    seen = []
    for page in (1, 2, 3):
        body = logs(gw, page=page, page_size=2)
        assert set(body) == {"data", "total", "page", "page_size", "total_pages"}
        assert body["total"] == 5 and body["page"] == page and body["page_size"] == 2 and body["total_pages"] == 3
        seen += [r["request_id"] for r in body["data"]]
    assert seen == request_ids[::-1]
    assert logs(gw, page=4, page_size=2)["data"] == []
    assert logs(gw, page=1, key_alias="beta")["total"] == 1


def test_global_spend(gw, history):
    alpha, _, _ = history
    response = call(gw, "GET", "/global/spend")
    assert response.json() == {"spend": pytest.approx(5 * CALL_COST), "max_budget": None, "requests": 5,
                               "prompt_tokens": 55, "completion_tokens": 35}
    mine = call(gw, "GET", "/global/spend", params={"api_key": alpha["key"], **WINDOW}).json()
    assert mine["spend"] == pytest.approx(3 * CALL_COST) and mine["requests"] == 3
    assert call(gw, "GET", "/global/spend", params={"end_date": str(TODAY - timedelta(days=1))}).json()[
        "requests"] == 0


def test_report_by_day_and_model(gw, history):
    report = call(gw, "GET", "/global/spend/report", params=WINDOW).json()
    assert report == call(gw, "GET", "/global/spend/report", params={**WINDOW, "group_by": "model"}).json()
    assert [(r["group_by_day"], r["model"], r["requests"]) for r in report] == [
        (str(TODAY), "other", 2), (str(TODAY), "priced", 3)]
    assert report[1] == {"group_by_day": str(TODAY), "model": "priced", "spend": pytest.approx(3 * CALL_COST),
                         "requests": 3, "prompt_tokens": 33, "completion_tokens": 21, "total_tokens": 54}


def test_report_by_day_and_key(gw, history):
    alpha, beta, _ = history
    report = call(gw, "GET", "/global/spend/report", params={**WINDOW, "group_by": "api_key"}).json()
    assert {(r["group_by_day"], r["api_key"], r["key_alias"], r["requests"]) for r in report} == {
        (str(TODAY), alpha["token"], "alpha", 3), (str(TODAY), beta["token"], "beta", 1),
        (str(TODAY), None, None, 1)}
    by_alias = {r["key_alias"]: r for r in report}
    assert by_alias["alpha"]["spend"] == pytest.approx(3 * CALL_COST) and by_alias["alpha"]["total_tokens"] == 54
    earlier = {"start_date": str(TODAY - timedelta(days=9)), "end_date": str(TODAY - timedelta(days=1))}
    assert call(gw, "GET", "/global/spend/report", params=earlier).json() == []


def test_key_info_logs_and_global_spend_agree(gw, history):
    alpha, beta, _ = history
    total = 0.0
    for key in (alpha, beta):
        info = call(gw, "GET", "/key/info", params={"key": key["key"]}).json()["info"]
        logged = sum(r["spend"] for r in logs(gw, api_key=key["token"]))
        assert info["spend"] == pytest.approx(logged)
        total += logged
    master = sum(r["spend"] for r in logs(gw) if r["api_key"] is None)
    assert call(gw, "GET", "/global/spend").json()["spend"] == pytest.approx(total + master)


@pytest.mark.parametrize("path,params,param", [
    ("/spend/logs", {"start_date": "yesterday"}, "start_date"),
    ("/spend/logs", {"end_date": "2025-13-01"}, "end_date"),
    ("/spend/logs", {"page": "0"}, "page"),
    ("/spend/logs", {"page": "1", "page_size": "1001"}, "page_size"),
    ("/spend/logs", {"summarize": "true"}, "summarize"),
    ("/global/spend", {"model": "priced"}, "model"),
    ("/global/spend/report", {"end_date": "2025-01-01"}, "start_date"),
    ("/global/spend/report", {"start_date": "2025-01-01"}, "end_date"),
    ("/global/spend/report", {**WINDOW, "group_by": "team"}, "group_by"),
])
def test_bad_spend_input_names_the_field(gw, path, params, param):
    response = call(gw, "GET", path, params=params)
    assert_openai_error(response, 400, "invalid_request_error", param=param)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
