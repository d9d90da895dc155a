"""gateway/settings.py: reading, resolving and validating the LiteLLM-style config."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from gateway.providers import ADAPTERS, load_config
from gateway.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
model_list:
  - model_name: mock
    litellm_params:
      model: mock/shin-mock
"""


@pytest.fixture
def load(tmp_path):
    """load(yaml_text, env={...}) → Settings, with the real provider registry and an isolated environment."""
    def _load(text: str, env: dict | None = None, name: str = "config.yaml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return load_settings(path, providers=ADAPTERS, environ=dict(env or {}))
    return _load


def config_error(load, text: str, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    return str(info.value)


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle` in the dedented text."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the config")


# --- a good config ---------------------------------------------------------------------------

FULL = """\
model_list:
  - model_name: shin-llama-3-1-70b
    litellm_params:
      model: openai/meta-llama/Llama-3.1-70B-Instruct
      api_base: https://api.example.com/v1/
      api_key: os.environ/SHIN_API_KEY
      rpm: 600
      tpm: 200000
      timeout: 60
      stream_timeout: 30
      max_retries: 2
      weight: 3
      extra_headers: {X-Team: research}
    model_info:
      id: llama-a
      input_cost_per_token: 0.00000088
      output_cost_per_token: 0.00000099
  - model_name: shin-llama-3-1-70b
    litellm_params: {model: openai/llama-3.1-70b, api_base: "http://10.0.0.5:8000/v1"}
  - model_name: shin-llama-3-1-8b
    litellm_params: {model: openai/llama-3.1-8b, api_base: "http://10.0.0.6:8000/v1"}
router_settings:
  routing_strategy: simple-shuffle
  num_retries: 4
  timeout: 45
  allowed_fails: 7
  cooldown_time: 30
  fallbacks: [{shin-llama-3-1-70b: [shin-llama-3-1-8b]}]
litellm_settings:
  drop_params: true
  request_timeout: 600
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  database_url: sqlite:///gateway.db
  max_request_body_mb: 2
  cors_allow_origins: ["https://app.example.com"]
  metrics_token: os.environ/METRICS_TOKEN
  background_health_checks: true
  health_check_interval: 120
"""


def test_full_contract_example_loads(load, tmp_path):
    settings = load(FULL, {"SHIN_API_KEY": "sk-upstream-aaaa", "LITELLM_MASTER_KEY": "sk-master-bbbb",
                           "METRICS_TOKEN": "metrics-cccc"})
    first, second, third = settings.deployments
    assert settings.model_names == ("shin-llama-3-1-70b", "shin-llama-3-1-8b")
    assert (first.id, first.provider, first.upstream_model) == ("llama-a", "openai", "meta-llama/Llama-3.1-70B-Instruct")
    assert first.api_base == "https://api.example.com/v1"          # trailing slash dropped
    assert first.api_key == "sk-upstream-aaaa"
    assert (first.rpm, first.tpm, first.timeout, first.stream_timeout) == (600, 200000, 60, 30)
    assert (first.max_retries, first.weight) == (2, 3)
    assert dict(first.extra_headers) == {"X-Team": "research"}
    assert (first.input_cost_per_token, first.output_cost_per_token) == (0.00000088, 0.00000099)
    assert first.line == 2 and second.line == 18
    assert second.timeout == 45                                    # router_settings.timeout is the default
    assert second.api_key is None and second.max_retries is None
    assert second.weight is None    # unset: simple-shuffle then weighs by rpm/tpm
    assert second.id != third.id
    router = settings.router
    assert (router.num_retries, router.timeout, router.allowed_fails, router.cooldown_time) == (4, 45, 7, 30)
    assert router.fallbacks == (("shin-llama-3-1-70b", ("shin-llama-3-1-8b",)),)
    assert settings.drop_params is True
    assert settings.master_key == "sk-master-bbbb"
    assert settings.metrics_token == "metrics-cccc"
    assert settings.max_request_body_bytes == 2 * 1024 * 1024
    assert settings.cors_allow_origins == ("https://app.example.com",)
    assert settings.background_health_checks is True and settings.health_check_interval == 120
    assert settings.database_url == f"sqlite:///{(tmp_path / 'gateway.db').resolve()}"
    assert {"sk-upstream-aaaa", "sk-master-bbbb", "metrics-cccc"} <= set(settings.secrets)
    assert settings.warnings == ()     # every key of the file is acted on: nothing to warn about
    assert all(d.drop_params for d in settings.deployments)    # litellm_settings.drop_params reaches every deployment


def test_secrets_never_appear_in_repr(load):
    settings = load(FULL, {"SHIN_API_KEY": "sk-upstream-aaaa", "LITELLM_MASTER_KEY": "sk-master-bbbb",
                           "METRICS_TOKEN": "metrics-cccc"})
    text = repr(settings)
    for secret in ("sk-upstream-aaaa", "sk-master-bbbb", "metrics-cccc"):
        assert secret not in text


def test_defaults(load, tmp_path):
    settings = load(MINIMAL)
    (mock,) = settings.deployments
    assert (mock.provider, mock.upstream_model, mock.mode, mock.weight) == ("mock", "shin-mock", "chat", None)
    assert mock.timeout == 600.0                                   # litellm_settings.request_timeout
    router = settings.router
    assert (router.routing_strategy, router.num_retries, router.allowed_fails) == ("simple-shuffle", 2, 3)
    assert router.fallbacks == () and router.timeout is None
    assert settings.drop_params is False
    assert settings.master_key is None and settings.redis_url is None and settings.metrics_token is None
    assert settings.max_request_body_bytes == 10 * 1024 * 1024
    assert settings.cors_allow_origins == ()      # no master key: no CORS unless configured
    assert settings.database_url == f"sqlite:///{(tmp_path / 'gateway.db').resolve()}"
    assert settings.warnings == ()


def test_cors_defaults_to_any_origin_only_with_a_master_key(load):
    keyed = load(MINIMAL + "general_settings:\n  master_key: sk-local-key\n")
    assert keyed.cors_allow_origins == ("*",)
    open_but_configured = load(MINIMAL + "general_settings:\n  cors_allow_origins: ['http://localhost:3000']\n")
    assert open_but_configured.cors_allow_origins == ("http://localhost:3000",)


def test_empty_file_is_an_empty_config(load):
    settings = load("")
    assert settings.deployments == () and settings.model_names == ()


def test_the_shipped_config_loads_without_any_environment():
    settings = load_settings(ROOT / "config" / "config.yaml", providers=ADAPTERS, environ={})
    assert "mock" in settings.model_names
    assert settings.master_key is None
    assert settings.cors_allow_origins == ()
    assert any("TOGETHER_API_KEY" in warning for warning in settings.warnings)
    together = [d for d in settings.deployments if d.model_name == "shin-llama-3-1-70b"]
    assert together and together[0].unset_env == ("TOGETHER_API_KEY",)


def test_stable_ids_are_the_same_on_every_load(load):
    env = {"LITELLM_MASTER_KEY": "sk-master-bbbb", "METRICS_TOKEN": "metrics-cccc"}
    first = [d.id for d in load(FULL, env).deployments]
    assert first == [d.id for d in load(FULL, env).deployments]
    assert len(set(first)) == 3


# --- os.environ/NAME --------------------------------------------------------------------------

ENV_CONFIG = """\
model_list:
  - model_name: m
    litellm_params:
      model: openai/x
      api_base: os.environ/UPSTREAM_BASE
      api_key: os.environ/UPSTREAM_KEY
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
"""


def test_environment_references_are_resolved(load):
    settings = load(ENV_CONFIG, {"UPSTREAM_BASE": "http://127.0.0.1:9/v1", "UPSTREAM_KEY": "key-from-env",
                                 "LITELLM_MASTER_KEY": "sk-master-from-env"})
    (deployment,) = settings.deployments
    assert deployment.api_base == "http://127.0.0.1:9/v1"
    assert deployment.api_key == "key-from-env"
    assert settings.master_key == "sk-master-from-env"
    assert settings.warnings == ()


@pytest.mark.parametrize("upstream_key", [None, ""])
def test_an_unset_or_empty_upstream_key_marks_the_deployment_keyless_with_a_warning(load, upstream_key):
    env = {"UPSTREAM_BASE": "http://127.0.0.1:9/v1", "LITELLM_MASTER_KEY": "sk-master"}
    if upstream_key is not None:
        env["UPSTREAM_KEY"] = upstream_key
    settings = load(ENV_CONFIG, env)
    (deployment,) = settings.deployments
    assert deployment.api_key is None
    assert deployment.unset_env == ("UPSTREAM_KEY",)
    assert settings.master_key == "sk-master"
    assert any("UPSTREAM_KEY" in w for w in settings.warnings)


@pytest.mark.parametrize("key", ["master_key", "metrics_token", "database_url", "redis_url"])
@pytest.mark.parametrize("value", [None, ""])
def test_an_unset_or_empty_variable_of_a_fail_closed_key_refuses_to_load(load, key, value):
    """Fail closed: a key the config names but the environment lacks must never mean "no key"."""
    text = MINIMAL + f"general_settings:\n  {key}: os.environ/GW_SECRET_VAR\n"
    env = {} if value is None else {"GW_SECRET_VAR": value}
    message = config_error(load, text, env)
    assert f"line {line_of(text, key)}: general_settings.{key}: environment variable GW_SECRET_VAR is not set" \
        in message


def test_a_config_without_any_master_key_loads_keyless(load):
    assert load(MINIMAL).master_key is None


def test_environment_value_is_validated_like_a_literal(load):
    message = config_error(load, ENV_CONFIG, {"UPSTREAM_BASE": "not a url", "LITELLM_MASTER_KEY": "sk-master"})
    assert "model_list.0.litellm_params.api_base" in message
    assert f"line {line_of(ENV_CONFIG, 'api_base:')}" in message


def test_the_process_environment_is_not_read_when_an_environ_is_given(load, monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "leaked-from-process-env")
    settings = load(ENV_CONFIG, {"UPSTREAM_BASE": "http://127.0.0.1:9/v1", "LITELLM_MASTER_KEY": "sk-master"})
    assert settings.deployments[0].api_key is None


# --- errors carry the dotted path and the line --------------------------------------------------

def test_unknown_top_level_key(load):
    text = MINIMAL + "litellm_setings:\n  drop_params: true\n"
    message = config_error(load, text)
    assert re.search(r"line 5: litellm_setings: unknown key", message), message


def test_unknown_nested_key_names_dotted_path_and_line(load):
    text = """\
    model_list:
      - model_name: a
        litellm_params:
          model: mock/a
      - model_name: b
        litellm_params:
          model: openai/b
          api_base: http://127.0.0.1:9/v1
          apikey: abc
    """
    message = config_error(load, text)
    assert f"line {line_of(text, 'apikey:')}: model_list.1.litellm_params.apikey: unknown key" in message, message
    assert str(Path("config.yaml")) in message


def test_unknown_key_in_router_settings(load):
    text = MINIMAL + "router_settings:\n  num_retries: 1\n  retry_policy: {}\n"
    message = config_error(load, text)
    assert "line 7: router_settings.retry_policy: unknown key" in message, message


@pytest.mark.parametrize("key, value, needle", [
    ("rpm", '"600"', "Not a valid integer"),
    ("rpm", "1.5", "Not a valid integer"),
    ("max_retries", "-1", "greater than or equal to 0"),
    ("timeout", "true", "Not a valid number"),
    ("timeout", "0", "greater than 0"),
    ("weight", "[1]", "Not a valid number"),
    ("extra_headers", "[a, b]", "Not a valid mapping"),
    ("api_base", "ftp://example.com", "Not a valid URL"),
])
def test_wrong_type_names_dotted_path_and_line(load, key, value, needle):
    text = f"""\
    model_list:
      - model_name: m
        litellm_params:
          model: openai/x
          api_base: http://127.0.0.1:9/v1
          {key}: {value}
    """ if key != "api_base" else f"""\
    model_list:
      - model_name: m
        litellm_params:
          model: openai/x
          {key}: {value}
    """
    message = config_error(load, text)
    expected_line = line_of(text, f"{key}: {value}")
    assert f"line {expected_line}: model_list.0.litellm_params.{key}:" in message, message
    assert needle in message


@pytest.mark.parametrize("section, key, value", [
    ("router_settings", "num_retries", '"2"'),
    ("router_settings", "routing_strategy", "round-robin"),
    ("router_settings", "fallbacks", "shin-llama"),
    ("litellm_settings", "drop_params", "[true]"),
    ("general_settings", "max_request_body_mb", "ten"),
    ("general_settings", "cors_allow_origins", "{a: b}"),
])
def test_wrong_type_in_settings_sections(load, section, key, value):
    text = MINIMAL + f"{section}:\n  {key}: {value}\n"
    message = config_error(load, text)
    assert f"line 6: {section}.{key}:" in message, message


def test_model_without_provider_prefix(load):
    text = "model_list:\n  - model_name: m\n    litellm_params:\n      model: gpt-4o\n"
    message = config_error(load, text)
    assert "line 4: model_list.0.litellm_params.model: must be '<provider>/<upstream model>'" in message, message


def test_missing_required_keys(load):
    text = "model_list:\n  - model_name: m\n  - litellm_params: {model: mock/x}\n"
    message = config_error(load, text)
    assert "line 2: model_list.0.litellm_params: Missing data for required field." in message, message
    assert "line 3: model_list.1.model_name: Missing data for required field." in message, message


def test_every_error_is_reported_not_only_the_first(load):
    text = MINIMAL + "router_settings:\n  num_retries: x\ngeneral_settings:\n  masterkey: y\n"
    message = config_error(load, text)
    assert "router_settings.num_retries" in message and "general_settings.masterkey" in message


def test_top_level_must_be_a_mapping(load):
    message = config_error(load, "- model_name: m\n")
    assert "config.yaml:1:" in message


def test_model_list_must_be_a_list(load):
    message = config_error(load, "model_list:\n  model_name: m\n")
    assert "line 1: model_list: Not a valid list." in message, message


def test_yaml_syntax_error_gives_the_line(load):
    text = MINIMAL + "router_settings:\n  num_retries: [1, 2\n  cooldown_time: 3\n"
    message = config_error(load, text)
    assert re.search(r"config\.yaml:(6|7|8): invalid YAML", message), message


def test_yaml_tab_indentation_gives_the_line(load):
    text = "model_list:\n  - model_name: m\n\tlitellm_params: {model: mock/x}\n"
    message = config_error(load, text)
    assert "config.yaml:3: invalid YAML" in message, message


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml", providers=ADAPTERS, environ={})


# --- cross-entry checks -----------------------------------------------------------------------

def test_unknown_provider(load):
    text = MINIMAL + "  - model_name: x\n    litellm_params:\n      model: cohere/command-r\n"
    message = config_error(load, text)
    assert "line 5: model_list.1.litellm_params.model: unknown provider 'cohere'" in message, message


def test_unknown_provider_is_accepted_when_no_registry_is_given(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_list:\n  - model_name: x\n    litellm_params: {model: cohere/command-r}\n")
    assert load_settings(path, environ={}).deployments[0].provider == "cohere"


def test_duplicate_deployment_id(load):
    text = """\
    model_list:
      - model_name: a
        litellm_params: {model: mock/a}
        model_info: {id: same}
      - model_name: b
        litellm_params: {model: mock/b}
        model_info: {id: same}
    """
    message = config_error(load, text)
    assert "line 5: model_list.1.model_info.id: duplicate deployment id 'same'" in message, message


@pytest.mark.parametrize("rule", ["{mock: [nope]}", "{nope: [mock]}"])
def test_fallback_naming_an_unknown_model(load, rule):
    text = MINIMAL + f"router_settings:\n  fallbacks:\n    - {rule}\n"
    message = config_error(load, text)
    assert "line 7: router_settings.fallbacks.0: unknown model_name 'nope'" in message, message


def test_bedrock_converse_prefix_is_the_same_model(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_list:\n  - model_name: x\n    litellm_params: "
                    "{model: bedrock/converse/anthropic.claude-3-haiku}\n")
    env = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-example", "AWS_REGION": "eu-west-1"}
    assert load_settings(path, environ=env).deployments[0].upstream_model == "anthropic.claude-3-haiku"


def _bedrock(tmp_path, params: str, env: dict):
    path = tmp_path / "c.yaml"
    path.write_text(f"model_list:\n  - model_name: x\n    litellm_params: {{model: bedrock/m1, {params}}}\n")
    return load_settings(path, environ=env).deployments[0]


def test_bedrock_credentials_and_region_come_from_the_aws_environment_when_the_config_names_none(tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "secret-env", "AWS_SESSION_TOKEN": "tok-env",
           "AWS_DEFAULT_REGION": "us-west-2"}
    deployment = _bedrock(tmp_path, "timeout: 5", env)
    assert dict(deployment.aws) == {"aws_access_key_id": "AKIDENV", "aws_secret_access_key": "secret-env",
                                    "aws_session_token": "tok-env", "aws_region_name": "us-west-2"}
    named = _bedrock(tmp_path, "aws_access_key_id: AKIDCONF, aws_secret_access_key: secret-conf", env)
    assert named.aws["aws_access_key_id"] == "AKIDCONF" and "aws_session_token" not in named.aws   # never mixed


def test_bedrock_with_no_credentials_or_no_region_is_refused_naming_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="aws_access_key_id: bedrock needs"):
        _bedrock(tmp_path, "aws_region_name: us-east-1", {})
    with pytest.raises(ConfigError, match="aws_region_name: bedrock needs a region"):
        _bedrock(tmp_path, "aws_access_key_id: AKID, aws_secret_access_key: secret-x", {})
    # a Bedrock API key at an explicit endpoint needs neither
    bearer = _bedrock(tmp_path, "api_key: bedrock-api-key-x, api_base: 'http://127.0.0.1:9'", {})
    assert bearer.api_key == "bedrock-api-key-x" and not bearer.aws


def test_drop_params_per_deployment_wins_over_the_global_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_list:\n"
                    "  - {model_name: a, litellm_params: {model: openai/a, drop_params: false}}\n"
                    "  - {model_name: b, litellm_params: {model: openai/b}}\n"
                    "litellm_settings: {drop_params: true}\n")
    a, b = load_settings(path, environ={}).deployments
    assert (a.drop_params, b.drop_params) == (False, True)


def test_azure_needs_api_base_and_its_ad_token_is_a_secret(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_list:\n  - {model_name: a, litellm_params: {model: azure/gpt4o-dep}}\n")
    with pytest.raises(ConfigError, match="api_base: required for provider 'azure'"):
        load_config(path, environ={})
    path.write_text("model_list:\n  - {model_name: a, litellm_params: {model: azure/gpt4o-dep, "
                    "api_base: 'https://res.openai.azure.com', azure_ad_token: os.environ/AZ_TOKEN}}\n")
    settings = load_config(path, environ={"AZ_TOKEN": "entra-token-zzzz"})
    assert settings.deployments[0].azure_ad_token == "entra-token-zzzz"
    assert "entra-token-zzzz" in settings.secrets and "entra-token-zzzz" not in repr(settings)


# --- database_url --------------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("sqlite:///gateway.db", "{dir}/gateway.db"),
    ("sqlite:///state/gw.db", "{dir}/state/gw.db"),
    ("sqlite:///../up.db", "{parent}/up.db"),
])
def test_relative_sqlite_path_is_resolved_against_the_config_folder(tmp_path, url, expected, monkeypatch):
    folder = tmp_path / "etc" / "shin"
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(MINIMAL + f"general_settings:\n  database_url: {url}\n")
    monkeypatch.chdir(tmp_path)        # the working directory must not matter
    settings = load_settings(Path("etc/shin/config.yaml"), providers=ADAPTERS, environ={})
    wanted = expected.format(dir=folder.resolve(), parent=folder.parent.resolve())
    assert settings.database_url == f"sqlite:///{wanted}"


def test_absolute_sqlite_and_postgres_urls_are_kept(load):
    assert load(MINIMAL + "general_settings:\n  database_url: sqlite:////var/lib/shin/gw.db\n"
                ).database_url == "sqlite:////var/lib/shin/gw.db"
    assert load(MINIMAL + "general_settings:\n  database_url: postgresql://u@db/shin\n"
                ).database_url == "postgresql://u@db/shin"


# --- the text the gunicorn master validated ------------------------------------------------------

def test_validated_text_wins_over_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("this: [is not valid")
    settings = load_settings(path, providers=ADAPTERS, environ={}, text=MINIMAL)
    assert settings.model_names == ("mock",)


def test_validated_text_from_the_environment(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("broken: [")
    settings = load_settings(path, providers=ADAPTERS, environ={"SHIN_GATEWAY_CONFIG_TEXT": MINIMAL})
    assert settings.model_names == ("mock",)


def test_a_provider_without_a_default_base_needs_api_base(tmp_path):
    """Refused when the config is loaded (check-config, gunicorn's master), not later in a worker."""
    from gateway.providers import load_config
    path = tmp_path / "config.yaml"
    path.write_text("model_list:\n  - model_name: local\n    litellm_params:\n      model: hosted_vllm/llama\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "line 2: model_list.0.litellm_params.api_base: required for provider 'hosted_vllm'" in str(error.value)


@pytest.mark.parametrize("written, used", [
    ("least-busy", "least-busy"), ("latency-based-routing", "latency-based-routing"),
    ("usage-based-routing", "usage-based-routing"), ("usage-based-routing-v2", "usage-based-routing"),
])
def test_routing_strategies_and_the_peers_alias(load, written, used):
    settings = load(MINIMAL + f"router_settings:\n  routing_strategy: {written}\n")
    assert settings.router.routing_strategy == used
    assert not settings.warnings          # acted on, so nothing to warn about


def test_an_unknown_routing_strategy_is_refused_with_its_line(load):
    with pytest.raises(ConfigError, match=r"line 6: router_settings.routing_strategy"):
        load(MINIMAL + "router_settings:\n  routing_strategy: cost-based-routing\n")


def test_the_new_fallback_lists_load_and_name_known_groups(load):
    text = MINIMAL + ("router_settings:\n  default_fallbacks: [mock]\n  max_fallbacks: 2\n"
                      "  context_window_fallbacks: [{mock: [mock]}]\n  content_policy_fallbacks: [{mock: [nope]}]\n")
    with pytest.raises(ConfigError, match=r"content_policy_fallbacks.0: unknown model_name 'nope'"):
        load(text)
    settings = load(text.replace("[nope]", "[mock]"))
    assert settings.router.default_fallbacks == ("mock",) and settings.router.max_fallbacks == 2
    assert settings.router.context_window_fallbacks == (("mock", ("mock",)),)


def test_an_unquoted_api_version_date_is_read_as_the_string_it_looks_like(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_list:\n  - {model_name: a, litellm_params: {model: azure/dep, "
                    "api_base: 'https://res.openai.azure.com', api_version: 2024-06-01}}\n")
    assert load_config(path, environ={}).deployments[0].api_version == "2024-06-01"
