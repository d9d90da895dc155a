"""The virtual key admin API on the real gateway (2 gevent workers, SQLite next to the config):
every /key/* route and field, the plaintext returned once and stored nowhere, master key only,
bad input named, and keys that are deleted, regenerated, blocked or expired refused on model routes."""
from __future__ import annotations

import hashlib
import time
from datetime import datetime

import openai
import pytest
import requests

from .conftest import MASTER_KEY, UPSTREAM_KEY
from .gateway_process import GatewayProcess
from .wire import assert_no_leak, assert_openai_error

MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
INPUT_PRICE, OUTPUT_PRICE = 0.001, 0.002
CALL_COST = 11 * INPUT_PRICE + 7 * OUTPUT_PRICE     # the fake upstream's echo answers: 11 in, 7 out
INFO_FIELDS = {"key_name", "token", "key_alias", "expires", "models", "max_budget", "budget_duration",
               "budget_reset_at", "spend", "rpm_limit", "tpm_limit", "max_parallel_requests", "model_rpm_limit",
               "model_tpm_limit", "metadata", "user_id", "team_id", "blocked", "created_at", "updated_at"}
PLAINTEXTS: list[str] = []          # every key generate() made: none may reach a log
ADMIN_ROUTES = [("POST", "/key/generate"), ("POST", "/key/update"), ("POST", "/key/delete"),
                ("GET", "/key/info"), ("GET", "/key/list"), ("POST", "/key/regenerate"),
                ("POST", "/key/sk-anything-at-all/regenerate"), ("POST", "/key/block"), ("POST", "/key/unblock"),
                ("GET", "/spend/logs"), ("GET", "/global/spend"), ("GET", "/global/spend/report")]


def priced_config(upstream) -> str:
    """Two echo models with known prices behind the fake upstream; keys and spend in SQLite by default."""
    entries = "".join(f"""
  - model_name: {name}
    litellm_params:
      model: openai/{target}
      api_base: {upstream.base_url}
      api_key: os.environ/TEST_UPSTREAM_KEY
    model_info:
      input_cost_per_token: {INPUT_PRICE}
      output_cost_per_token: {OUTPUT_PRICE}""" for name, target in (("priced", "echo-a"), ("other", "echo-b")))
    return f"""model_list:{entries}
router_settings:
  num_retries: 0
  cooldown_time: 0
general_settings:
  master_key: {MASTER_KEY}
"""


def start_priced_gateway(upstream, folder) -> GatewayProcess:
    path = folder / "config.yaml"
    path.write_text(priced_config(upstream))
    return GatewayProcess(path, workers=2, env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY}).start()


def call(gateway, method: str, path: str, *, key: str | None = MASTER_KEY, headers: dict | None = None,
         **kwargs) -> requests.Response:
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    return requests.request(method, f"{gateway.url}{path}", headers=headers, timeout=10, **kwargs)


def generate(gateway, **fields) -> dict:
    response = call(gateway, "POST", "/key/generate", json=fields)
    assert response.status_code == 200, response.text
    PLAINTEXTS.append(response.json()["key"])
    return response.json()


def chat(gateway, key: str, model: str = "priced", **kwargs) -> requests.Response:
    return call(gateway, "POST", "/v1/chat/completions", key=key,
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, **kwargs)


def eventually(check, timeout: float = 3.0):
    """`check()`'s first truthy value, polled: key changes reach other workers within their cache TTL."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def statuses(gateway, key: str, times: int = 6) -> set[int]:
    """Chat statuses over several calls, so that both workers answer at least once in all likelihood."""
    return {chat(gateway, key).status_code for _ in range(times)}


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    process = start_priced_gateway(upstream, tmp_path_factory.mktemp("keys"))
    yield process
    process.stop()


# --- generate / info / list: the plaintext once --------------------------------------------------

def test_generate_returns_every_field_and_the_plaintext_once(gw):
    fields = {"key_alias": "every-field", "models": ["priced"], "max_budget": 12.5, "budget_duration": "30d",
              "rpm_limit": 100, "tpm_limit": 10000, "max_parallel_requests": 4,
              "model_rpm_limit": {"priced": 50}, "model_tpm_limit": {"priced": 5000},
              "metadata": {"owner": "ops", "tags": ["a"]}, "user_id": "user-1", "team_id": "team-every"}
    before = time.time()
    made = generate(gw, duration="7d", **fields)
    plaintext = made["key"]
    assert set(made) == INFO_FIELDS | {"key"}
    assert plaintext.startswith("sk-") and len(plaintext) >= 40
    assert made["token"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert made["key_name"] == f"sk-...{plaintext[-4:]}"
    assert {k: made[k] for k in fields} == fields
    assert made["spend"] == 0 and made["blocked"] is False
    expires = _epoch(made["expires"])
    assert before + 7 * 86400 - 5 <= expires <= time.time() + 7 * 86400 + 5
    assert before + 30 * 86400 - 5 <= _epoch(made["budget_reset_at"]) <= time.time() + 30 * 86400 + 5
    for by in (plaintext, made["token"]):
        info = call(gw, "GET", "/key/info", params={"key": by})
        assert info.status_code == 200, info.text
        assert info.json() == {"key": made["token"], "info": {k: v for k, v in made.items() if k != "key"}}
        assert plaintext not in info.text
    listed = call(gw, "GET", "/key/list", params={"team_id": "team-every", "return_full_object": "true"})
    assert listed.json()["keys"] == [{k: v for k, v in made.items() if k != "key"}]
    assert plaintext not in listed.text
    assert chat(gw, plaintext).status_code == 200


def test_an_empty_body_makes_a_key_for_every_model(gw):
    response = requests.post(f"{gw.url}/key/generate", headers=MASTER, timeout=10)
    assert response.status_code == 200, response.text
    made = response.json()
    assert made["models"] == [] and made["expires"] is None and made["max_budget"] is None
    assert chat(gw, made["key"], "priced").status_code == 200
    assert chat(gw, made["key"], "other").status_code == 200


def test_a_caller_chosen_key(gw):
    made = generate(gw, key="sk-chosen-by-the-caller-1")
    assert made["key"] == "sk-chosen-by-the-caller-1"
    assert chat(gw, "sk-chosen-by-the-caller-1").status_code == 200
    again = call(gw, "POST", "/key/generate", json={"key": "sk-chosen-by-the-caller-1"})
    assert_openai_error(again, 400, "invalid_request_error", code="duplicate_key", param="key")


def test_plaintext_never_reaches_the_database_file(gw):
    made = [generate(gw, key_alias=f"on-disk-{i}") for i in range(3)]
    for key in made:
        assert chat(gw, key["key"]).status_code == 200
    eventually(lambda: call(gw, "GET", "/spend/logs", params={"api_key": made[-1]["token"]}).json())
    files = [p for p in gw.config_path.parent.iterdir() if p.name.startswith("gateway.db")]
    assert files, list(gw.config_path.parent.iterdir())
    dump = b"".join(p.read_bytes() for p in files)
    for key in made:
        assert key["token"].encode() in dump          # the right file: the hash is there
        assert key["key"].encode() not in dump
        assert key["key"][3:].encode() not in dump
    assert MASTER_KEY.encode() not in dump
    assert made[0]["key"] not in gw.logs()


def test_list_pages(gw):
    tokens = [generate(gw, team_id="team-pager", user_id=f"pager-{i % 2}")["token"] for i in range(5)]
    seen = []
    for page in (1, 2, 3):
        body = call(gw, "GET", "/key/list", params={"team_id": "team-pager", "page": page, "size": 2}).json()
        assert body["total_count"] == 5 and body["total_pages"] == 3 and body["current_page"] == page
        assert len(body["keys"]) == (2 if page < 3 else 1)
        seen += body["keys"]
    assert sorted(seen) == sorted(tokens)
    assert call(gw, "GET", "/key/list", params={"team_id": "team-pager", "user_id": "pager-1"}).json()[
        "total_count"] == 2
    default = call(gw, "GET", "/key/list").json()
    assert default["current_page"] == 1 and len(default["keys"]) <= 10 and default["total_count"] >= 5
    aliased = generate(gw, key_alias="listed-by-alias")
    assert call(gw, "GET", "/key/list", params={"key_alias": "listed-by-alias"}).json()["keys"] == [
        aliased["token"]]


def test_info_shows_spend_after_calls(gw):
    made = generate(gw, key_alias="spender")
    client = openai.OpenAI(api_key=made["key"], base_url=f"{gw.url}/v1", max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}])

    def spend():
        value = call(gw, "GET", "/key/info", params={"key": made["token"]}).json()["info"]["spend"]
        return value if value == pytest.approx(3 * CALL_COST) else None
    assert eventually(spend, 5.0) == pytest.approx(3 * CALL_COST)


# --- update / delete / regenerate / block --------------------------------------------------------

def test_update_changes_only_the_named_fields(gw):
    made = generate(gw, key_alias="to-update", rpm_limit=10, user_id="u-up", metadata={"a": 1})
    response = call(gw, "POST", "/key/update", json={"key": made["key"], "models": ["other"], "tpm_limit": 500,
                                                   "metadata": {"b": 2}})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert set(updated) == INFO_FIELDS and updated["token"] == made["token"]
    assert updated["models"] == ["other"] and updated["tpm_limit"] == 500 and updated["metadata"] == {"b": 2}
    assert updated["rpm_limit"] == 10 and updated["user_id"] == "u-up" and updated["key_alias"] == "to-update"
    assert made["key"] not in response.text
    assert eventually(lambda: statuses(gw, made["key"]) == {403})        # `priced` no longer allowed
    assert chat(gw, made["key"], "other").status_code == 200
    by_token = call(gw, "POST", "/key/update", json={"key": made["token"], "key_alias": "updated-alias"})
    assert by_token.json()["key_alias"] == "updated-alias"
    missing = call(gw, "POST", "/key/update", json={"key": "sk-no-such-key-here", "rpm_limit": 1})
    assert_openai_error(missing, 404, "invalid_request_error", code="key_not_found")


def test_duplicate_alias(gw):
    generate(gw, key_alias="only-once")
    again = call(gw, "POST", "/key/generate", json={"key_alias": "only-once"})
    assert_openai_error(again, 400, "invalid_request_error", code="duplicate_key", param="key_alias")
    other = generate(gw)
    clash = call(gw, "POST", "/key/update", json={"key": other["token"], "key_alias": "only-once"})
    assert_openai_error(clash, 400, "invalid_request_error", code="duplicate_key", param="key_alias")


def test_delete_by_key_and_by_alias(gw):
    one, two = generate(gw), generate(gw, key_alias="delete-me")
    assert chat(gw, one["key"]).status_code == chat(gw, two["key"]).status_code == 200
    response = call(gw, "POST", "/key/delete", json={"keys": [one["key"]]})
    assert response.json() == {"deleted_keys": [one["key"]]}
    response = call(gw, "POST", "/key/delete", json={"key_aliases": ["delete-me"]})
    assert response.json() == {"deleted_keys": ["delete-me"]}
    for key in (one, two):
        assert eventually(lambda key=key: statuses(gw, key["key"]) == {401}, 1.5)
        assert_openai_error(call(gw, "GET", "/key/info", params={"key": key["token"]}), 404,
                            "invalid_request_error", code="key_not_found")
    gone = call(gw, "POST", "/key/delete", json={"keys": [one["token"]]})
    assert_openai_error(gone, 404, "invalid_request_error", code="key_not_found")


@pytest.mark.parametrize("form", ["body", "path"])
def test_regenerate_retires_the_old_plaintext(gw, form):
    made = generate(gw, key_alias=f"regen-{form}", rpm_limit=50)
    assert chat(gw, made["key"]).status_code == 200
    if form == "body":
        response = call(gw, "POST", "/key/regenerate", json={"key": made["key"], "rpm_limit": 60})
    else:
        response = call(gw, "POST", f"/key/{made['token']}/regenerate", json={"rpm_limit": 60})
    assert response.status_code == 200, response.text
    fresh = response.json()
    assert set(fresh) == INFO_FIELDS | {"key"}
    assert fresh["key"].startswith("sk-") and fresh["key"] != made["key"]
    assert fresh["token"] == hashlib.sha256(fresh["key"].encode()).hexdigest() != made["token"]
    assert fresh["key_alias"] == f"regen-{form}" and fresh["rpm_limit"] == 60
    assert eventually(lambda: statuses(gw, made["key"]) == {401}, 1.5)
    assert statuses(gw, fresh["key"]) == {200}
    chosen = call(gw, "POST", f"/key/{fresh['key']}/regenerate", json={"new_key": f"sk-regen-chosen-{form}"})
    assert chosen.json()["key"] == f"sk-regen-chosen-{form}"
    assert eventually(lambda: statuses(gw, f"sk-regen-chosen-{form}") == {200})


def test_regenerate_an_unknown_key(gw):
    for response in (call(gw, "POST", "/key/regenerate", json={"key": "sk-never-made-1"}),
                     call(gw, "POST", "/key/sk-never-made-1/regenerate")):
        assert_openai_error(response, 404, "invalid_request_error", code="key_not_found")


def test_block_and_unblock(gw):
    made = generate(gw)
    assert chat(gw, made["key"]).status_code == 200
    blocked = call(gw, "POST", "/key/block", json={"key": made["key"]})
    assert blocked.status_code == 200 and set(blocked.json()) == INFO_FIELDS and blocked.json()["blocked"] is True
    assert eventually(lambda: statuses(gw, made["key"]) == {401}, 1.5)
    refused = chat(gw, made["key"])
    assert_openai_error(refused, 401, "authentication_error", code="invalid_api_key")
    assert "blocked" in refused.json()["error"]["message"]
    info = call(gw, "GET", "/key/info", params={"key": made["token"]}).json()
    assert info["info"]["blocked"] is True
    unblocked = call(gw, "POST", "/key/unblock", json={"key": made["token"]})
    assert unblocked.json()["blocked"] is False
    assert eventually(lambda: statuses(gw, made["key"]) == {200}, 1.5)


def test_an_expired_key_is_refused(gw):
    made = generate(gw, duration="1s")
    time.sleep(1.2)
    refused = chat(gw, made["key"])
    assert_openai_error(refused, 401, "authentication_error", code="invalid_api_key")
    assert "expired" in refused.json()["error"]["message"]


# --- who may call, and bad input -----------------------------------------------------------------

@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_a_virtual_key_is_refused_on_every_admin_route(gw, method, path):
    virtual = generate(gw)["key"]
    response = call(gw, method, path, key=virtual, json={})
    assert_openai_error(response, 403, "permission_error", code="master_key_required")
    assert virtual not in response.text


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
@pytest.mark.parametrize("key", [None, "sk-not-a-key-at-all"])
def test_no_or_unknown_key_is_401_on_every_admin_route(gw, method, path, key):
    response = call(gw, method, path, key=key, json={})
    assert_openai_error(response, 401, "authentication_error", code="invalid_api_key")


def test_admin_routes_are_at_the_root_only(gw):
    assert_openai_error(call(gw, "POST", "/v1/key/generate", json={}), 404, "invalid_request_error")


@pytest.mark.parametrize("body,param", [
    ({"rpm_limit": "5"}, "rpm_limit"), ({"rpm_limit": -1}, "rpm_limit"), ({"rpm_limit": 1.5}, "rpm_limit"),
    ({"tpm_limit": True}, "tpm_limit"), ({"max_parallel_requests": -2}, "max_parallel_requests"),
    ({"max_budget": "10"}, "max_budget"), ({"max_budget": -0.5}, "max_budget"),
    ({"models": "priced"}, "models"), ({"models": [1]}, "models[0]"),
    ({"model_rpm_limit": {"priced": -1}}, "model_rpm_limit"), ({"model_tpm_limit": ["priced"]}, "model_tpm_limit"),
    ({"metadata": "x"}, "metadata"), ({"duration": "forever"}, "duration"), ({"duration": "0d"}, "duration"),
    ({"budget_duration": "30 days"}, "budget_duration"), ({"key_alias": "x" * 257}, "key_alias"),
    ({"key_alias": 5}, "key_alias"), ({"user_id": 7}, "user_id"), ({"team_id": ["t"]}, "team_id"),
    ({"key": "not-sk-prefixed"}, "key"), ({"key": "sk-1"}, "key"), ({"blocked": "yes"}, "blocked"),
    ({"allowed_cache_controls": []}, "allowed_cache_controls"), ({"soft_budget": 1}, "soft_budget"),
])
def test_bad_generate_input_names_the_field(gw, body, param):
    response = call(gw, "POST", "/key/generate", json=body)
    assert_openai_error(response, 400, "invalid_request_error", param=param)


@pytest.mark.parametrize("method,path,kwargs,param", [
    ("POST", "/key/update", {"json": {"rpm_limit": 1}}, "key"),
    ("POST", "/key/update", {"json": {"key": "sk-whatever", "spend": 0}}, "spend"),
    ("POST", "/key/delete", {"json": {}}, "keys"),
    ("POST", "/key/delete", {"json": {"keys": "sk-abc"}}, "keys"),
    ("POST", "/key/delete", {"json": {"key_aliases": [3]}}, "key_aliases[0]"),
    ("GET", "/key/info", {}, "key"),
    ("GET", "/key/info", {"params": {"key": "sk-x", "verbose": "1"}}, "verbose"),
    ("GET", "/key/list", {"params": {"page": "0"}}, "page"),
    ("GET", "/key/list", {"params": {"size": "101"}}, "size"),
    ("GET", "/key/list", {"params": {"size": "ten"}}, "size"),
    ("GET", "/key/list", {"params": {"return_full_object": "maybe"}}, "return_full_object"),
    ("POST", "/key/regenerate", {"json": {}}, "key"),
    ("POST", "/key/regenerate", {"json": {"key": "sk-whatever", "new_key": "plain"}}, "new_key"),
    ("POST", "/key/sk-whatever/regenerate", {"json": {"key": "sk-whatever"}}, "key"),
    ("POST", "/key/block", {"json": {}}, "key"),
    ("POST", "/key/unblock", {"json": {"key": 5}}, "key"),
])
def test_bad_admin_input_names_the_field(gw, method, path, kwargs, param):
    response = call(gw, method, path, **kwargs)
    assert_openai_error(response, 400, "invalid_request_error", param=param)


def test_a_body_that_is_not_a_json_object(gw):
    for data in (b"[]", b"{not json", b'"key"'):
        response = call(gw, "POST", "/key/generate", data=data, headers={"Content-Type": "application/json"})
        assert_openai_error(response, 400, "invalid_request_error")
        assert_no_leak(response.text)


def test_no_plaintext_key_reaches_the_log(gw):
    """Last in this module: every key the tests above made, and regenerated, was used or refused by now."""
    assert len(PLAINTEXTS) > 20
    logs = gw.logs()
    for plaintext in PLAINTEXTS + ["sk-regen-chosen-body", "sk-regen-chosen-path", MASTER_KEY]:
        assert plaintext not in logs


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
