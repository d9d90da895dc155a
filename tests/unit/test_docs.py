"""The guides in docs/ against the code they describe, so that neither drifts from the other.

A config key the schema accepts, a metric the gateway exports, an error code it
answers or a log event it writes that its guide does not list fails here; so
does a guide naming one that no longer exists, a Grafana dashboard that would
not import, and a relative link to a missing file or heading. Pure file reads
and `ast`: no network, no gateway.

Conventions the guides follow (and these tests rely on):
- docs/configuration.md: the keys of each config mapping are listed, each as
  `key` in the first cell of a table row, under the heading named after that
  mapping (`model_list`, `litellm_params`, `model_info`, `router_settings`,
  `litellm_settings`, `general_settings`); each top-level key has its own heading.
- docs/monitoring-guide.md: the "Metrics" table has one row per metric:
  `name` | type | `label`, … (or "none") | …; every query is a ```promql block.
- docs/troubleshooting.md: under "Error codes", the second cell of each table row
  holds the `code`; under "Log events", the first cell holds the `event`.
"""
from __future__ import annotations

import ast
import functools
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from marshmallow import fields

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GATEWAY = ROOT / "gateway"
GUIDE = DOCS / "monitoring-guide.md"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
CONFIGURATION = DOCS / "configuration.md"
DEPLOYMENT = DOCS / "deployment.md"
ALERTS = DOCS / "prometheus" / "alerts.yml"
SCRAPE = DOCS / "prometheus" / "prometheus.yml"
DASHBOARD = DOCS / "grafana" / "shin-gateway-dashboard.json"
NGINX_SITE = ROOT / "nginx" / "shin-gateway.conf"
# Labels Prometheus itself puts on every scraped series.
TARGET_LABELS = {"instance", "job"}


# --- Markdown, read the way GitHub renders it ----------------------------------------------------

def headings(text: str) -> list[tuple[int, str, int]]:
    """(level, title, line index) of each heading outside code fences."""
    found, fenced = [], False
    for index, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#{1,6}) (.+)", line)):
            found.append((len(match.group(1)), match.group(2).strip(), index))
    return found


def chapter(text: str, title: str, *, own_only: bool = False) -> str:
    """The lines under the heading `title`: up to the next heading (`own_only`) or the next of its level or above."""
    lines = text.splitlines()
    marks = headings(text)
    matches = [(level, index) for level, name, index in marks if name == title]
    assert len(matches) == 1, f"expected exactly one heading {title!r}, found {len(matches)}"
    level, start = matches[0]
    end = next((index for other, _, index in marks
                if index > start and (own_only or other <= level)), len(lines))
    return "\n".join(lines[start + 1:end])


def table_cells(text: str) -> list[list[str]]:
    """The cells of every table row (separator rows and header rows left out)."""
    rows, previous_was_table = [], False
    for line in text.splitlines():
        if not line.startswith("|"):
            previous_was_table = False
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            continue
        if previous_was_table:
            rows.append(cells)
        previous_was_table = True     # the first row of a table is its header
    return rows


def ticked(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, title, _ in headings(text):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


# --- (a) every config key in the configuration reference ------------------------------------------

def schema_mappings(schema, path: tuple[str, ...] = ()):
    """(path, keys) of the config mapping a schema reads, then of every mapping nested in it."""
    keys = {(field.data_key or name): field for name, field in schema.fields.items()}
    yield path, set(keys)
    for key, field in keys.items():
        inner = field.inner if isinstance(field, fields.List) else field
        if isinstance(inner, fields.Nested):
            yield from schema_mappings(inner.schema, path + (key,))


def documented_keys(title: str) -> set[str]:
    text = CONFIGURATION.read_text(encoding="utf-8")
    return {name for row in table_cells(chapter(text, f"`{title}`", own_only=True)) for name in ticked(row[0])}


def config_mappings():
    from gateway.settings import ConfigSchema
    return list(schema_mappings(ConfigSchema()))


def test_schema_walk_finds_every_mapping_of_the_config():
    paths = {path for path, _ in config_mappings()}
    assert paths == {(), ("model_list",), ("model_list", "litellm_params"), ("model_list", "model_info"),
                     ("router_settings",), ("litellm_settings",), ("general_settings",)}
    # Headings are named after a mapping's last key: two mappings must not share one.
    last = [path[-1] for path in paths if path]
    assert len(last) == len(set(last))


def test_every_top_level_config_key_has_its_own_heading():
    text = CONFIGURATION.read_text(encoding="utf-8")
    titles = {title for level, title, _ in headings(text) if level == 2}
    top = dict(config_mappings())[()]
    assert sorted(key for key in top if f"`{key}`" not in titles) == []


@pytest.mark.parametrize("path", [path for path, _ in config_mappings() if path], ids=".".join)
def test_configuration_reference_lists_exactly_the_keys_the_schema_accepts(path):
    keys = dict(config_mappings())[path]
    documented = documented_keys(path[-1])
    where = f"docs/configuration.md, table under `{path[-1]}`"
    assert sorted(keys - documented) == [], f"keys the config accepts but {where} does not list"
    assert sorted(documented - keys) == [], f"keys {where} lists but the config refuses"


def test_configuration_reference_documents_the_operations_keys():
    # The plan's new keys, by name: a check that the walk above really reads these sections.
    assert {"log_level", "disable_metrics", "metrics_token"} <= documented_keys("general_settings")
    assert {"json_logs", "request_timeout"} <= documented_keys("litellm_settings")


# --- (b) every metric in the monitoring guide, and no name that is not one ---------------------

def metric_definitions() -> dict[str, tuple[str, tuple[str, ...]]]:
    from gateway import metrics
    return {name: (kind, tuple(labels)) for name, kind, labels, _ in metrics.DEFINITIONS}


def exported_series(definitions) -> dict[str, set[str]]:
    """Every series name a scrape may show → the labels it may carry (histograms: _bucket with le, _sum, _count)."""
    series = {}
    for name, (kind, labels) in definitions.items():
        if kind == "histogram":
            series[f"{name}_bucket"] = {*labels, "le"}
            series[f"{name}_sum"] = set(labels)
            series[f"{name}_count"] = set(labels)
        else:
            series[name] = set(labels)
    return series


def guide_queries() -> list[str]:
    return [block.strip() for block in fenced_blocks(GUIDE.read_text(encoding="utf-8"), "promql")]


def alert_rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_targets() -> list[dict]:
    return [target for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def all_queries() -> dict[str, str]:
    """Every PromQL expression the docs ship: the guide's, the alert rules', the dashboard's."""
    queries = {f"guide #{i + 1}": q for i, q in enumerate(guide_queries())}
    queries.update({f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()})
    queries.update({f"dashboard panel target {i + 1}": target["expr"]
                    for i, target in enumerate(dashboard_targets())})
    queries.update({f"dashboard variable {v['name']}": v["definition"] for v in dashboard()["templating"]["list"]})
    return queries


def test_monitoring_guide_table_lists_every_metric_with_its_type_and_labels():
    definitions = metric_definitions()
    rows = table_cells(chapter(GUIDE.read_text(encoding="utf-8"), "Metrics"))
    listed = {}
    for cells in rows:
        names = ticked(cells[0])
        if len(names) == 1 and next(iter(names)).startswith("shin_gateway_"):
            labels = ticked(cells[2]) if cells[2] != "none" else set()
            listed[names.pop()] = (cells[1], labels)
    assert sorted(set(definitions) - set(listed)) == [], "metrics the gateway exports but the guide's table lacks"
    assert sorted(set(listed) - set(definitions)) == [], "metrics the guide's table lists but the gateway lacks"
    for name, (kind, labels) in definitions.items():
        assert listed[name] == (kind, set(labels)), name


def test_docs_name_no_metric_the_gateway_does_not_export():
    series = exported_series(metric_definitions())
    # nginx's limit zones (deployment.md quotes them) share the prefix.
    zones = set(re.findall(r"zone=(\w+)", NGINX_SITE.read_text(encoding="utf-8")))
    known = set(series) | set(metric_definitions()) | zones
    for path in (GUIDE, ALERTS, DASHBOARD, TROUBLESHOOTING, DEPLOYMENT):
        named = set(re.findall(r"\bshin_gateway_[a-z0-9_]*[a-z0-9*]", path.read_text(encoding="utf-8")))
        # `shin_gateway_key_*`: a family, which must match some metric.
        stale = {name for name in named if not (name in known or name.endswith("_*") and any(
            k.startswith(name[:-1]) for k in known))}
        assert sorted(stale) == [], f"{path.relative_to(ROOT)} names metrics that do not exist"


def selector_labels(query: str) -> list[tuple[str, str]]:
    """(series, label) for every label matcher inside `series{…}`."""
    return [(series, label) for series, inside in re.findall(r"\b(shin_gateway_[a-z0-9_]+)\s*\{([^}]*)\}", query)
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", inside)]


def grouping_labels(query: str) -> set[str]:
    return {label.strip() for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", query)
            for label in clause.split(",") if label.strip()}


def test_every_query_filters_and_groups_only_by_labels_its_metrics_have():
    series = exported_series(metric_definitions())
    for where, query in all_queries().items():
        for name, label in selector_labels(query):
            assert name in series, (where, name)
            assert label in series[name] | TARGET_LABELS, f"{where}: {name} has no label {label!r}"
        used = set(re.findall(r"\bshin_gateway_[a-z0-9_]+", query))
        available = set().union(*(series.get(name, set()) for name in used)) | TARGET_LABELS
        assert grouping_labels(query) <= available, (where, grouping_labels(query) - available)


def test_every_guide_query_is_one_expression_on_gateway_metrics():
    queries = guide_queries()
    assert len(queries) >= 20
    assert len(set(queries)) == len(queries), "a query is listed twice"
    for query in queries:
        assert "shin_gateway_" in query, query
        assert "\n\n" not in query, f"one expression per ```promql block: {query!r}"


def test_guide_queries_cover_the_questions_operators_ask():
    text = "\n".join(guide_queries())
    for needle in ("rate(shin_gateway_requests_total", 'status_code=~"5.."',
                   "histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,",
                   "shin_gateway_time_to_first_token_seconds_bucket", "shin_gateway_overhead_seconds_bucket",
                   "shin_gateway_tokens_total", "increase(shin_gateway_spend_total[1h])",
                   "increase(shin_gateway_spend_total[1d])", "shin_gateway_key_spend_total",
                   "shin_gateway_upstream_errors_total", "shin_gateway_deployment_cooldowns_total",
                   "shin_gateway_deployment_cooling", "shin_gateway_in_flight_requests"):
        assert needle in text, needle


# --- the alert rules and the scrape config -------------------------------------------------------

def test_alert_rules_have_the_expected_shape():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {"ShinGatewayDown", "ShinGatewayHigh5xxRatio", "ShinGatewayUpstreamErrors",
            "ShinGatewayDeploymentCooling", "ShinGatewayNoRequests", "ShinGatewayHighLatencyP99",
            "ShinGatewaySpendRate"} <= set(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    assert 'up{job="shin-gateway"} == 0' in {rule["expr"] for rule in rules}


def test_monitoring_guide_lists_every_alert_rule():
    listed = {name for row in table_cells(chapter(GUIDE.read_text(encoding="utf-8"), "Alert rules"))
              for name in ticked(row[0])}
    assert listed == {rule["alert"] for rule in alert_rules()}


def test_scrape_config_scrapes_the_job_the_alerts_select_with_the_metrics_token():
    config = yaml.safe_load(SCRAPE.read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "shin-gateway"
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:4000"]
    assert config["rule_files"] == ["/etc/prometheus/shin-gateway-alerts.yml"]
    # The guide shows the same job, and installs the rules where the config reads them.
    guide = GUIDE.read_text(encoding="utf-8")
    shown = [yaml.safe_load(block) for block in fenced_blocks(guide, "yaml")]
    assert {"scrape_configs": config["scrape_configs"]} in shown
    assert {"rule_files": config["rule_files"]} in shown
    assert f"install -m 0644 /opt/shin-gateway/docs/prometheus/alerts.yml {config['rule_files'][0]}" in guide
    assert job["authorization"]["credentials_file"] in guide


@functools.cache
def gateway_sources() -> tuple[tuple[str, ast.Module], ...]:
    """(path, syntax tree) of every module of the gateway, parsed once."""
    return tuple((str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8")))
                 for path in sorted(GATEWAY.rglob("*.py")))


# --- (c) every error code the gateway answers, in the troubleshooting guide -------------------------

def error_codes_in_the_source() -> dict[str, str]:
    """code → where: GatewayError classes' `code`, every `code="…"` argument, the worker's own refusals,
    and the JSON error pages of the nginx site."""
    found = {}
    for where, tree in gateway_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for statement in node.body:
                    targets = (statement.targets if isinstance(statement, ast.Assign)
                               else [statement.target] if isinstance(statement, ast.AnnAssign) else [])
                    value = getattr(statement, "value", None)
                    if any(isinstance(t, ast.Name) and t.id == "code" for t in targets) \
                            and isinstance(value, ast.Constant) and isinstance(value.value, str):
                        found.setdefault(value.value, f"{where}: class {node.name}")
            elif isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "code" and isinstance(keyword.value, ast.Constant) \
                            and isinstance(keyword.value.value, str):
                        found.setdefault(keyword.value.value, f"{where}:{node.lineno}")
                if isinstance(node.func, ast.Name) and node.func.id == "_Refusal" and len(node.args) >= 3:
                    found.setdefault(node.args[2].value, f"{where}:{node.lineno}")
    for code in re.findall(r'"code":"([a-z_]+)"', NGINX_SITE.read_text(encoding="utf-8")):
        found.setdefault(code, "nginx/shin-gateway.conf")
    return found


def documented_error_codes() -> set[str]:
    rows = table_cells(chapter(TROUBLESHOOTING.read_text(encoding="utf-8"), "Error codes"))
    return {code for row in rows for code in ticked(row[1])}


def test_error_code_walk_finds_the_known_codes():
    codes = error_codes_in_the_source()
    assert {"invalid_api_key", "upstream_auth_error", "no_healthy_deployment", "request_too_large",
            "forbidden_parameter", "unsupported_parameter", "uri_too_long", "bad_request",
            "request_header_too_large"} <= set(codes)


def test_troubleshooting_explains_every_error_code():
    codes = error_codes_in_the_source()
    documented = documented_error_codes()
    missing = {code: where for code, where in codes.items() if code not in documented}
    assert missing == {}, "error codes the gateway (or its nginx site) answers but docs/troubleshooting.md lacks"
    # `null`: the schema violations' code (InvalidRequest has none).
    assert sorted(documented - set(codes) - {"null"}) == [], "codes docs/troubleshooting.md lists but nothing answers"


# --- (d) every log event in the troubleshooting guide ------------------------------------------------

def log_events_in_the_source() -> dict[str, str]:
    """event → where: `"event": "…"` in a dict literal, `event="…"`, and the formatter's default events
    (a module-level `…EVENTS` dict and the default of its `.get`)."""
    found = {}
    for where, tree in gateway_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "event" and isinstance(value, ast.Constant):
                        found.setdefault(value.value, f"{where}:{node.lineno}")
            elif isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "event" and isinstance(keyword.value, ast.Constant):
                        found.setdefault(keyword.value.value, f"{where}:{node.lineno}")
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "get" and isinstance(func.value, ast.Name) \
                        and "EVENTS" in func.value.id and len(node.args) == 2 \
                        and isinstance(node.args[1], ast.Constant):
                    found.setdefault(node.args[1].value, f"{where}:{node.lineno}")
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) \
                    and any(isinstance(t, ast.Name) and "EVENTS" in t.id for t in node.targets):
                for value in node.value.values:
                    if isinstance(value, ast.Constant):
                        found.setdefault(value.value, f"{where}:{node.lineno}")
    return found


def documented_events() -> set[str]:
    rows = table_cells(chapter(TROUBLESHOOTING.read_text(encoding="utf-8"), "Log events"))
    return {event for row in rows for event in ticked(row[0])}


LOG_METHODS = {"debug": "debug", "info": "info", "warning": "warning", "error": "error", "exception": "error",
               "critical": "critical"}


def log_event_levels() -> dict[str, set[str]]:
    """event → the levels its `log.<level>(…, extra={"event": …})` calls write it at."""
    levels: dict[str, set[str]] = {}
    for _, tree in gateway_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_METHODS:
                for keyword in node.keywords:
                    if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
                        for key, value in zip(keyword.value.keys, keyword.value.values, strict=True):
                            if isinstance(key, ast.Constant) and key.value == "event" \
                                    and isinstance(value, ast.Constant):
                                levels.setdefault(value.value, set()).add(LOG_METHODS[node.func.attr])
    return levels


def test_troubleshooting_gives_each_event_the_level_it_is_logged_at():
    rows = table_cells(chapter(TROUBLESHOOTING.read_text(encoding="utf-8"), "Log events"))
    documented = {name: row[1] for row in rows for name in ticked(row[0])}
    wrong = {event: (sorted(levels), documented.get(event)) for event, levels in log_event_levels().items()
             if not all(re.search(rf"\b{level}\b", documented.get(event, "")) for level in levels)}
    assert wrong == {}


def test_log_event_walk_finds_the_plans_events():
    events = log_events_in_the_source()
    assert {"request", "startup", "config_invalid", "reload", "reload_refused", "shutdown", "cooldown",
            "health_change", "server", "warning", "uncaught", "spend_rows_lost", "redis_down"} <= set(events)


def test_troubleshooting_explains_every_log_event():
    events = log_events_in_the_source()
    documented = documented_events()
    missing = {event: where for event, where in events.items() if event not in documented}
    assert missing == {}, "log events the gateway writes but docs/troubleshooting.md lacks"
    assert sorted(documented - set(events)) == [], "events docs/troubleshooting.md lists but nothing logs"


# --- (e) the Grafana dashboard imports ----------------------------------------------------------------

def test_dashboard_has_grafanas_import_structure():
    board = dashboard()
    assert board["title"] and re.fullmatch(r"[A-Za-z0-9_-]{8,40}", board["uid"])
    assert board["id"] is None      # Grafana assigns its own on import
    assert 36 <= board["schemaVersion"] <= 41
    (source,) = board["__inputs"]
    assert source == {**source, "name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}
    required = {(item["type"], item["id"]) for item in board["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    panel_types = {panel["type"] for panel in board["panels"]}
    assert panel_types <= {"timeseries", "stat", "table"}
    assert {("panel", kind) for kind in panel_types} <= required
    assert isinstance(board["time"]["from"], str) and board["templating"]["list"]


def test_dashboard_panels_have_unique_ids_and_fit_the_grid():
    panels = dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"} and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"panel {panel['title']!r} overlaps another"
        cells |= covered


def test_dashboard_targets_query_the_imported_data_source():
    board = dashboard()
    for panel in board["panels"]:
        assert panel["title"] and panel["targets"], panel.get("title")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip() and "shin_gateway_" in target["expr"]
    # No data source but the one the importer picks: nothing else to wire by hand.
    text = DASHBOARD.read_text(encoding="utf-8")
    uids = set(re.findall(r'"uid": "([^"]*)"', text)) - {board["uid"]}
    assert uids <= {"${DS_PROMETHEUS}", "-- Grafana --"}


def test_dashboard_has_a_model_group_variable_its_panels_use():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    group = variables["model_group"]
    assert group["type"] == "query" and group["datasource"]["uid"] == "${DS_PROMETHEUS}"
    assert group["definition"] == group["query"]["query"] == "label_values(shin_gateway_requests_total, model_group)"
    assert group["includeAll"] and group["multi"] and group["allValue"] == ".*"
    exprs = [target["expr"] for target in dashboard_targets()]
    with_groups = [e for e in exprs if re.search(r"shin_gateway_(requests|request_duration|time_to_first|tokens|"
                                                 r"spend|deployment_cooling|deployment_in_flight)", e)]
    assert with_groups and all('model_group=~"$model_group"' in e for e in with_groups)
    used = {name for e in exprs for name in re.findall(r"\$(\w+)", e)} - {"__rate_interval"}
    assert used <= set(variables), used - set(variables)


def test_dashboard_shows_every_metric_but_the_per_key_counters_it_sums():
    names = set(metric_definitions())
    shown = {name for e in (t["expr"] for t in dashboard_targets())
             for name in re.findall(r"\bshin_gateway_[a-z0-9_]+", e)}
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) if name not in names else name for name in shown}
    assert sorted(names - shown - {"shin_gateway_key_requests_total", "shin_gateway_key_tokens_total"}) == []


# --- (f) links -------------------------------------------------------------------------------------

def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def relative_links(text: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)     # links only count outside code
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_to_files_and_headings(path):
    text = path.read_text(encoding="utf-8")
    broken = []
    for link in relative_links(text):
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(link)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            broken.append(link)
    assert broken == []


def test_integration_guide_next_steps_point_at_the_operations_guides():
    guide = (DOCS / "api-integration-guide.md").read_text(encoding="utf-8")
    links = set(relative_links(chapter(guide, "Next Steps")))
    assert {"monitoring-guide.md", "troubleshooting.md", "deployment.md", "../examples/"} <= links
    assert not (DOCS / "production-deployment.md").exists() and "production-deployment.md" not in links


# --- the several-VMs part of the deployment guide -------------------------------------------------

def test_several_vm_general_settings_are_a_valid_config(tmp_path):
    from gateway.providers import ADAPTERS
    from gateway.settings import load_settings

    section = chapter(DEPLOYMENT.read_text(encoding="utf-8"), "Several VMs: PostgreSQL and Redis")
    (shown,) = [block for block in fenced_blocks(section, "yaml") if block.startswith("general_settings:")]
    env_lines = [block for block in fenced_blocks(section, "text") if "DATABASE_URL=" in block]
    assert len(env_lines) == 1
    environ = dict(line.split("=", 1) for line in env_lines[0].splitlines() if line)
    environ["LITELLM_MASTER_KEY"] = "sk-several-vms-0123456789"
    shipped = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
    shipped["general_settings"] = yaml.safe_load(shown)["general_settings"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(shipped))
    settings = load_settings(config, providers=ADAPTERS, environ=environ)
    assert settings.database_url == environ["DATABASE_URL"] and settings.database_url.startswith("postgresql://")
    assert settings.redis_url == environ["REDIS_URL"] and settings.redis_url.startswith("redis://")
    assert [w for w in settings.warnings if "DATABASE_URL" in w or "REDIS_URL" in w] == []
    # The passwords in those URLs are secrets the logs redact.
    assert {"a-long-random-password", "another-long-random-password"} <= set(settings.secrets)


NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")
def test_several_vm_upstream_block_fits_the_shipped_site(tmp_path):
    from .test_deploy_files import free_port, nginx_test, write_nginx_conf

    section = chapter(DEPLOYMENT.read_text(encoding="utf-8"), "nginx (on 10.0.0.10)")
    (block,) = fenced_blocks(section, "nginx")
    site = NGINX_SITE.read_text(encoding="utf-8")
    shipped = re.search(r"^upstream shin_gateway \{.*?^\}\n", site, re.S | re.M)
    # The guide keeps the shipped block's settings and only lists more servers.
    kept = [line.strip() for line in shipped.group(0).splitlines()
            if line.strip() and not line.strip().startswith(("#", "server "))]
    assert [line.strip() for line in block.splitlines() if line.strip() and "server " not in line] == kept
    assert len(re.findall(r"^\s*server \S+;$", block, re.M)) >= 2
    text = site.replace(shipped.group(0), block).replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    done = nginx_test(tmp_path, write_nginx_conf(tmp_path, text))
    assert done.returncode == 0, done.stderr
