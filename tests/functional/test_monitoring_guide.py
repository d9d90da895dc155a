"""The monitoring and troubleshooting guides, run: Prometheus scrapes a real gateway and answers their queries.

- promtool checks the alert rules, the scrape config and every PromQL expression
  the docs ship (the guide's ```promql blocks, the Grafana dashboard's targets),
  and unit-tests each alert rule on synthetic series: it fires when it should,
  and not on the series next to it that should not make it fire.
- A real Prometheus (Debian's package) scrapes a real gateway (2 gevent
  workers) every second with the guide's scrape config, its token and its alert
  rules; after traffic that touches every metric (a virtual key, streams, a
  group that falls back, a group that is down), every guide and dashboard query
  must return data, every alert rule must evaluate without error, and the 5xx
  alert must pick out the failing group.
- The guides' `curl` commands run against that gateway and Prometheus, and
  their `journalctl … | jq` recipes run on the gateway's own log.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from .gateway_process import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GUIDE = DOCS / "monitoring-guide.md"
GUIDES = (GUIDE, DOCS / "troubleshooting.md", DOCS / "deployment.md")
ALERTS = DOCS / "prometheus" / "alerts.yml"
SCRAPE = DOCS / "prometheus" / "prometheus.yml"
DASHBOARD = DOCS / "grafana" / "shin-gateway-dashboard.json"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
JQ = shutil.which("jq")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None,
                                      reason="prometheus is not installed (apt-get install prometheus)")

MASTER = "sk-monitoring-guide-master-0123"
METRICS_TOKEN = "metrics-token-monitoring-guide-42"
# The request ids the guides use in their examples: the traffic below sends them.
GUIDE_REQUEST_IDS = ("5f0c9a7e1b2d4c3a", "9c1d0f3b7a2e4e55a1c3b8e0d6f4a2b1")
# What the dashboard's template variables stand for when a panel's query is run by hand.
DASHBOARD_VARIABLES = {"$__rate_interval": "5m", "$model_group": ".*", "$instance": ".*"}


# --- the docs' PromQL ------------------------------------------------------------------------------

def guide_queries() -> list[str]:
    return [q.strip() for q in re.findall(r"^```promql\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), re.S | re.M)]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_queries() -> list[str]:
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in DASHBOARD_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"a dashboard variable this test does not know: {expr}"
            queries.append(expr)
    return queries


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"] for rule in group["rules"]]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@needs_promtool
def test_promtool_accepts_the_alert_rules():
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


@needs_promtool
def test_promtool_accepts_the_scrape_config(tmp_path):
    done = promtool("check", "config", str(local_scrape_config(tmp_path, "127.0.0.1:4000", scrape_every="15s")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "1 rule files found" in done.stdout


DEBIAN_CONFIG = Path("/etc/prometheus/prometheus.yml")


@needs_promtool
@pytest.mark.skipif(not DEBIAN_CONFIG.exists(), reason="Debian's prometheus package is not installed")
def test_the_job_and_rules_merge_into_debians_prometheus_config(tmp_path):
    # What the guide has the reader do: add the job to the packaged prometheus.yml and name the rules file.
    ours = yaml.safe_load(local_scrape_config(tmp_path, "127.0.0.1:4000", scrape_every="15s").read_text())
    packaged = yaml.safe_load(DEBIAN_CONFIG.read_text(encoding="utf-8"))
    packaged["scrape_configs"] = [*(packaged.get("scrape_configs") or []), *ours["scrape_configs"]]
    packaged["rule_files"] = [*(packaged.get("rule_files") or []), *ours["rule_files"]]
    merged = tmp_path / "merged.yml"
    merged.write_text(yaml.safe_dump(packaged))
    done = promtool("check", "config", str(merged))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_parses_every_query_of_the_guide_and_the_dashboard(tmp_path):
    queries = guide_queries() + dashboard_queries()
    rules = [{"record": f"docs:query_{i}", "expr": query} for i, query in enumerate(queries)]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


# --- each alert rule on synthetic series (promtool test rules) ----------------------------------------

GW = 'instance="gw-1:4000", job="shin-gateway"'
GW2 = 'instance="gw-2:4000", job="shin-gateway"'


def buckets(metric: str, labels: str, counts: dict[str, str]) -> list[dict]:
    return [{"series": f'{metric}_bucket{{{labels}, le="{le}"}}', "values": values} for le, values in counts.items()]


# alert → (input series, minutes to evaluate at, the alerts expected then: their labels but alertname).
# Every scenario also holds series that must not make the alert fire.
SCENARIOS = {
    "ShinGatewayDown": (
        [{"series": f"up{{{GW}}}", "values": "0x20"}, {"series": f"up{{{GW2}}}", "values": "1x20"}],
        10, [{"severity": "critical", "instance": "gw-1:4000", "job": "shin-gateway"}]),
    "ShinGatewayAbsent": (
        [{"series": 'up{instance="other:9100", job="node"}', "values": "1x20"}],
        10, [{"severity": "critical", "job": "shin-gateway"}]),
    "ShinGatewayNoRequests": (
        [{"series": f'shin_gateway_requests_total{{{GW}, model_group="mock", status_code="200"}}', "values": "5+0x60"},
         {"series": f'shin_gateway_requests_total{{{GW2}, model_group="mock", status_code="200"}}',
          "values": "5+10x60"},
         {"series": f"up{{{GW}}}", "values": "1x60"}, {"series": f"up{{{GW2}}}", "values": "1x60"}],
        45, [{"severity": "warning", "instance": "gw-1:4000"}]),
    "ShinGatewayHigh5xxRatio": (
        [{"series": f'shin_gateway_requests_total{{{GW}, model_group="bad", status_code="502"}}', "values": "0+10x40"},
         {"series": f'shin_gateway_requests_total{{{GW}, model_group="bad", status_code="200"}}', "values": "0+10x40"},
         {"series": f'shin_gateway_requests_total{{{GW}, model_group="good", status_code="503"}}', "values": "1+0x40"},
         {"series": f'shin_gateway_requests_total{{{GW}, model_group="good", status_code="200"}}',
          "values": "0+100x40"}],
        30, [{"severity": "critical", "model_group": "bad"}]),
    "ShinGatewayUpstreamErrors": (
        [{"series": f'shin_gateway_upstream_errors_total{{{GW}, deployment="d1", error_type="upstream_error"}}',
          "values": "0+60x40"},
         {"series": f'shin_gateway_upstream_errors_total{{{GW}, deployment="d2", error_type="client_error"}}',
          "values": "0+600x40"}],
        30, [{"severity": "warning", "deployment": "d1", "error_type": "upstream_error"}]),
    "ShinGatewayUpstreamAuthErrors": (
        [{"series": f'shin_gateway_upstream_errors_total{{{GW}, deployment="d1", error_type="upstream_auth_error"}}',
          "values": "0 0 0 1 1 1"},
         {"series": f'shin_gateway_upstream_errors_total{{{GW}, deployment="d2", error_type="upstream_auth_error"}}',
          "values": "1 1 1 1 1 1"}],
        4, [{"severity": "critical", "deployment": "d1"}]),
    "ShinGatewayDeploymentCooling": (
        [{"series": f'shin_gateway_deployment_cooling{{{GW}, model_group="g", deployment="d1"}}', "values": "1x30"},
         {"series": f'shin_gateway_deployment_cooling{{{GW}, model_group="g", deployment="d2"}}', "values": "0x30"}],
        15, [{"severity": "warning", "model_group": "g", "deployment": "d1"}]),
    "ShinGatewayModelGroupDown": (
        [{"series": f'shin_gateway_deployment_cooling{{{GW}, model_group="down", deployment="d1"}}', "values": "1x30"},
         {"series": f'shin_gateway_deployment_cooling{{{GW}, model_group="down", deployment="d2"}}', "values": "1x30"},
         {"series": f'shin_gateway_deployment_cooling{{{GW}, model_group="half", deployment="d3"}}', "values": "1x30"},
         {"series": f'shin_gateway_deployment_cooling{{{GW}, model_group="half", deployment="d4"}}', "values": "0x30"}],
        15, [{"severity": "critical", "model_group": "down"}]),
    "ShinGatewayHighLatencyP99": (
        buckets("shin_gateway_request_duration_seconds", f'{GW}, model_group="slow"',
                {"1": "0+0x40", "120": "0+0x40", "300": "0+10x40", "+Inf": "0+10x40"})
        + buckets("shin_gateway_request_duration_seconds", f'{GW}, model_group="fast"',
                  {"1": "0+10x40", "120": "0+10x40", "300": "0+10x40", "+Inf": "0+10x40"}),
        30, [{"severity": "warning", "model_group": "slow"}]),
    "ShinGatewaySlowTimeToFirstToken": (
        buckets("shin_gateway_time_to_first_token_seconds", f'{GW}, model_group="slow"',
                {"1": "0+0x40", "10": "0+0x40", "30": "0+10x40", "+Inf": "0+10x40"})
        + buckets("shin_gateway_time_to_first_token_seconds", f'{GW}, model_group="fast"',
                  {"1": "0+10x40", "10": "0+10x40", "30": "0+10x40", "+Inf": "0+10x40"}),
        30, [{"severity": "warning", "model_group": "slow"}]),
    "ShinGatewayHighOverheadP99": (
        buckets("shin_gateway_overhead_seconds", GW, {"0.01": "0+0x40", "0.1": "0+10x40", "+Inf": "0+10x40"})
        + buckets("shin_gateway_overhead_seconds", GW2, {"0.01": "0+10x40", "0.1": "0+10x40", "+Inf": "0+10x40"}),
        30, [{"severity": "warning", "instance": "gw-1:4000"}]),
    "ShinGatewaySpendRate": (
        [{"series": f'shin_gateway_spend_total{{{GW}, model_group="a"}}', "values": "0+0.5x120"},
         {"series": f'shin_gateway_spend_total{{{GW2}, model_group="b"}}', "values": "0+0.5x120"}],
        90, [{"severity": "warning"}]),
    "ShinGatewayKeySpendRate": (
        [{"series": f'shin_gateway_key_spend_total{{{GW}, key_alias="team-a"}}', "values": "0+1x120"},
         {"series": f'shin_gateway_key_spend_total{{{GW}, key_alias="team-b"}}', "values": "0+0.1x120"}],
        90, [{"severity": "warning", "key_alias": "team-a"}]),
}


def test_every_alert_rule_has_a_scenario():
    assert sorted(SCENARIOS) == sorted(rule["alert"] for rule in alert_rules())


def rules_without_annotations(tmp_path: Path) -> Path:
    """The alert rules as shipped, less their annotations (what a rule test would have to quote word for word)."""
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path / "alerts.yml"
    path.write_text(yaml.safe_dump(document))
    return path


@needs_promtool
@pytest.mark.parametrize("alert", sorted(SCENARIOS))
def test_alert_rule_fires_on_its_scenario_and_only_there(tmp_path, alert):
    series, minutes, expected = SCENARIOS[alert]
    rules_without_annotations(tmp_path)
    check = {"eval_time": f"{minutes}m", "alertname": alert, "exp_alerts": [{"exp_labels": e} for e in expected]}
    # And before the alert's conditions can have held for its `for:` time and window: nothing yet.
    early = {"eval_time": "0m", "alertname": alert, "exp_alerts": []}
    tests = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [early, check]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    done = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


# --- a real Prometheus scraping a real gateway -----------------------------------------------------------

def local_scrape_config(tmp_path: Path, target: str, scrape_every: str = "1s") -> Path:
    """docs/prometheus/prometheus.yml with its target, token file and rules file pointed at this test's."""
    config = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    token = tmp_path / "metrics-token"
    token.write_text(METRICS_TOKEN + "\n")
    job["authorization"]["credentials_file"] = str(token)
    job["static_configs"] = [{"targets": [target]}]
    job["scrape_interval"] = scrape_every
    config["global"].update(scrape_interval=scrape_every, evaluation_interval=scrape_every)
    config["rule_files"] = [str(ALERTS)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def gateway_config(closed_ports: list[int]) -> str:
    """mock with prices; `broken` (two dead deployments) falls back to mock; `down` (one dead) has no fallback."""
    one, two, three = closed_ports
    return f"""
model_list:
  - model_name: mock
    litellm_params: {{model: mock/shin-mock}}
    model_info: {{input_cost_per_token: 0.001, output_cost_per_token: 0.002}}
  - model_name: broken
    litellm_params: {{model: openai/gone, api_base: "http://127.0.0.1:{one}/v1", api_key: unused-upstream-key-1}}
    model_info: {{id: broken-a}}
  - model_name: broken
    litellm_params: {{model: openai/gone, api_base: "http://127.0.0.1:{two}/v1", api_key: unused-upstream-key-2}}
    model_info: {{id: broken-b}}
  - model_name: down
    litellm_params: {{model: openai/gone, api_base: "http://127.0.0.1:{three}/v1", api_key: unused-upstream-key-3}}
    model_info: {{id: down-a}}
router_settings:
  num_retries: 1
  allowed_fails: 1
  cooldown_time: 600
  fallbacks: [{{broken: [mock]}}]
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  metrics_token: os.environ/METRICS_TOKEN
"""


class Prometheus:
    def __init__(self, tmp_path: Path, target: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "prometheus.log"
        config = local_scrape_config(tmp_path, target)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_for(lambda: self._get("/-/ready") == 200, timeout, "Prometheus did not become ready", self.log_path)

    def _get(self, path: str) -> int | None:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return requests.get(self.url + path, timeout=2).status_code
        except requests.RequestException:
            return None

    def query(self, expr: str) -> dict:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]

    def api(self, path: str) -> dict:
        body = requests.get(f"{self.url}/api/v1/{path}", timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def samples_of(self, selector: str) -> int:
        """How many scraped samples Prometheus holds for the series `selector` picks (its most sampled one)."""
        result = self.query(f"count_over_time({selector}[5m])")["result"]
        return max((int(float(item["value"][1])) for item in result), default=0)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def wait_for(condition, timeout: float, message: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{message}\n{log.read_text(errors='replace')[-3000:] if log else ''}")
        time.sleep(0.2)


def send_traffic(base: str, virtual_key: str) -> list[int]:
    """One round of requests that moves every metric; the statuses, for the record."""
    master = {"Authorization": f"Bearer {MASTER}"}
    user = {"Authorization": f"Bearer {virtual_key}"}
    chat = {"model": "mock", "messages": [{"role": "user", "content": "How are the metrics?"}]}
    statuses = []

    def post(path, body, headers, **extra):
        # Connection: close spreads the requests over both workers.
        with requests.post(base + path, json=body, headers={**headers, "Connection": "close", **extra},
                           timeout=30, stream=body.get("stream", False)) as response:
            if body.get("stream"):
                assert b"data: [DONE]" in b"".join(response.iter_content(None))
            statuses.append(response.status_code)

    for _ in range(3):
        post("/v1/chat/completions", chat, master)
        post("/v1/chat/completions", chat, user)
        post("/v1/chat/completions", {**chat, "stream": True, "stream_options": {"include_usage": True}}, user)
    post("/v1/completions", {"model": "mock", "prompt": "Say hi"}, master)
    post("/v1/embeddings", {"model": "mock", "input": "metrics"}, user)
    post("/v1/chat/completions", {**chat, "model": "broken"}, master)       # retried, then the fallback answers
    post("/v1/chat/completions", {**chat, "model": "down"}, master)         # 502, then 503 while it cools
    post("/v1/chat/completions", {**chat, "model": "down"}, master)
    post("/v1/chat/completions", {**chat, "model": "no-such-model"}, master)
    post("/v1/chat/completions", chat, {"Authorization": "Bearer sk-not-a-key"})
    for request_id in GUIDE_REQUEST_IDS:
        post("/v1/chat/completions", chat, master, **{"x-request-id": request_id})
    return statuses


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The gateway, scraped every second by Prometheus, after two rounds of traffic a few scrapes apart."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    tmp_path = tmp_path_factory.mktemp("monitoring")
    config = tmp_path / "config.yaml"
    config.write_text(gateway_config([free_port() for _ in range(3)]))
    gateway = GatewayProcess(config, workers=2, env={"LITELLM_MASTER_KEY": MASTER, "METRICS_TOKEN": METRICS_TOKEN})
    gateway.start()
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{gateway.port}")
    try:
        prometheus.wait_ready()
        wait_for(lambda: prometheus.query('up{job="shin-gateway"} == 1')["result"], 20,
                 "Prometheus never scraped the gateway", prometheus.log_path)
        created = requests.post(f"{gateway.url}/key/generate", json={"key_alias": "docs-team"},
                                headers={"Authorization": f"Bearer {MASTER}"}, timeout=10)
        assert created.status_code == 200, created.text
        key = created.json()["key"]
        statuses = send_traffic(gateway.url, key)
        assert {200, 401, 404} <= set(statuses) and {502, 503} & set(statuses), statuses
        # Rates need two scrapes of a series, and a change between them: a second round after two scrapes.
        series = 'shin_gateway_requests_total{model_group="mock", status_code="200"}'
        wait_for(lambda: prometheus.samples_of(series) >= 2, 20, "no second scrape", prometheus.log_path)
        statuses += send_traffic(gateway.url, key)
        before = prometheus.samples_of(series)
        wait_for(lambda: prometheus.samples_of(series) >= before + 2, 20, "no scrape after the traffic",
                 prometheus.log_path)
        yield gateway, prometheus, key
    finally:
        prometheus.stop()
        gateway.stop()


@needs_prometheus
@pytest.mark.parametrize("source", ["guide", "dashboard"])
def test_every_query_returns_data_from_the_scraped_gateway(stack, source):
    _, prometheus, _ = stack
    queries = guide_queries() if source == "guide" else dashboard_queries()
    empty = [query for query in queries if not prometheus.query(query)["result"]]
    assert empty == [], f"{source} queries that found nothing after traffic touching every metric"


@needs_prometheus
def test_queries_see_the_traffic_as_it_was(stack):
    _, prometheus, _ = stack

    def labels(expr: str, name: str) -> set[str]:
        return {item["metric"].get(name, "") for item in prometheus.query(expr)["result"]}

    assert labels("sum by (model_group) (rate(shin_gateway_requests_total[5m]))", "model_group") == {"mock", "down", ""}
    assert {"200", "401", "404", "502", "503"} <= labels("sum by (status_code) (rate(shin_gateway_requests_total[5m]))",
                                                        "status_code")
    assert labels("max by (model_group, deployment) (shin_gateway_deployment_cooling) == 1",
                  "deployment") == {"broken-a", "broken-b", "down-a"}
    assert labels("min by (model_group) (shin_gateway_deployment_cooling) == 1", "model_group") == {"broken", "down"}
    assert labels("sort_desc(sum by (key_alias) (increase(shin_gateway_key_spend_total[1d])))",
                  "key_alias") == {"docs-team"}
    upstream = labels("sum by (deployment, error_type) (rate(shin_gateway_upstream_errors_total[5m]))", "deployment")
    assert {"broken-a", "broken-b", "down-a"} <= upstream


@needs_prometheus
def test_dashboard_variables_find_the_groups_and_instances(stack):
    gateway, prometheus, _ = stack
    for variable in dashboard()["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"]).groups()
        values = prometheus.api(f"label/{label}/values?match[]={metric}")
        assert values, variable["name"]
    assert "mock" in prometheus.api("label/model_group/values?match[]=shin_gateway_requests_total")
    assert prometheus.api("label/instance/values?match[]=shin_gateway_build_info") == [f"127.0.0.1:{gateway.port}"]


@needs_prometheus
def test_alert_rules_evaluate_and_the_5xx_alert_picks_the_failing_group(stack):
    _, prometheus, _ = stack
    wait_for(lambda: all(not rule.get("lastEvaluation", "0001").startswith("0001")
                         for group in prometheus.api("rules")["groups"] for rule in group["rules"]),
             20, "the alert rules were not evaluated", prometheus.log_path)
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(rule["alert"] for rule in alert_rules())
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []

    def active():
        return {(a["labels"]["alertname"], a["labels"].get("model_group")) for a in prometheus.api("alerts")["alerts"]}
    wait_for(lambda: ("ShinGatewayHigh5xxRatio", "down") in active(), 20, "the 5xx alert stayed silent")
    names = {name for name, _ in active()}
    assert ("ShinGatewayHigh5xxRatio", "mock") not in active()
    assert not names & {"ShinGatewayDown", "ShinGatewayAbsent", "ShinGatewayUpstreamAuthErrors"}, names


# --- the guides' commands ----------------------------------------------------------------------------

def bash_lines(starting: str) -> list[tuple[str, str]]:
    """(guide, line) for each line of a ```bash block in the guides that starts with `starting`."""
    found = []
    for path in GUIDES:
        for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M):
            found += [(path.name, line) for line in block.splitlines() if line.startswith(starting)]
    return found


def runnable(line: str, gateway_url: str, prometheus_url: str) -> str | None:
    """The guide's command pointed at this test's gateway and Prometheus; None for other hosts."""
    hosts = re.findall(r"https?://[^/\s'\"]+", line)
    if not hosts or any(h not in ("http://127.0.0.1:4000", "http://127.0.0.1:9090") for h in hosts):
        return None
    line = line.replace("http://127.0.0.1:4000", gateway_url).replace("http://127.0.0.1:9090", prometheus_url)
    return line.replace("<master key>", MASTER)


@needs_prometheus
def test_guide_curl_commands_work_against_the_gateway_and_prometheus(stack):
    gateway, prometheus, _ = stack
    commands = [(guide, runnable(line, gateway.url, prometheus.url)) for guide, line in bash_lines("curl ")]
    commands = [(guide, command) for guide, command in commands if command]
    assert len(commands) >= 10, commands
    for guide, command in commands:
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "METRICS_TOKEN": METRICS_TOKEN})
        assert done.returncode == 0 and done.stdout.strip(), (guide, command, done.stdout, done.stderr)
        if MASTER in command or "METRICS_TOKEN" in command:   # authorised: no OpenAI error body
            assert '{"error":' not in done.stdout.replace(" ", ""), (guide, command, done.stdout)
        promised = re.search(r"#\s*(\d{3})\b", command)     # `-w '%{http_code}' … # 401 without the token`
        if promised and "%{http_code}" in command:
            assert done.stdout.strip() == promised.group(1), (guide, command, done.stdout)
        if "/api/v1/query" in command:
            assert json.loads(done.stdout)["data"]["result"][0]["value"][1] == "1"


def json_values(text: str) -> list:
    """Every JSON value jq printed, one per line (-c) or pretty-printed."""
    decoder, values, at = json.JSONDecoder(), [], 0
    text = text.strip()
    while at < len(text):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
        while at < len(text) and text[at].isspace():
            at += 1
    return values


def journal_recipes() -> list[tuple[str, str]]:
    recipes = [(guide, line) for guide, line in bash_lines("journalctl -u shin-gateway ") if "| jq " in line]
    return recipes


@needs_prometheus
@pytest.mark.skipif(JQ is None, reason="jq is not installed (apt-get install jq)")
def test_guide_jq_recipes_read_the_gateways_log(stack):
    gateway, _, _ = stack
    recipes = journal_recipes()
    assert len(recipes) >= 10
    answered = 0
    for guide, recipe in recipes:
        # `journalctl -u shin-gateway … -o cat` prints the lines the gateway wrote: here, its log file.
        journal, _, filters = recipe.partition(" | ")
        assert " -o cat" in journal, (guide, recipe)
        done = subprocess.run(["bash", "-o", "pipefail", "-c", f"cat {gateway.log_path} | {filters}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (guide, recipe, done.stderr)
        values = json_values(done.stdout)
        answered += bool(values)
        request_id = re.search(r"--arg id (\S+)", recipe)
        if request_id:
            assert any(v.get("request_id") == request_id.group(1) for v in values), (guide, recipe)
        if filters.endswith('fromjson? | select(.event == "request")'):
            assert {v["event"] for v in values} == {"request"} and len(values) >= 20, (guide, recipe)
        if "group_by(.key_alias)" in recipe:
            (per_key,) = values
            assert "docs-team" in {row["key_alias"] for row in per_key}, per_key
    # Every recipe but those asking for what this traffic did not cause (slow requests, auth errors) finds lines.
    assert answered >= len(recipes) - 2, answered
