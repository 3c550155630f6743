"""services.toml validation: every problem is reported with the file, the key and what is wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from meshrun.config import load_config, parse_config
from meshrun.errors import ConfigError
from meshrun.registry import load_services, select

ROOT = Path(__file__).resolve().parents[2]


def problems_of(data: dict, names: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config = parse_config(data, "mesh.toml")
        load_services(config, names)
    assert info.value.file == "mesh.toml"
    assert str(info.value).startswith("mesh.toml:")
    return info.value.problems


def test_shipped_services_toml_is_valid_and_names_the_pipeline():
    config = load_config(ROOT / "services.toml")
    assert config.transport == "memory"
    assert list(config.services) == ["auth", "orders", "inventory", "email", "analytics", "billing",
                                     "notification", "users"]
    assert config.topics["order-events"].partitions == 3
    loaded = load_services(config)
    assert {ls.name: ls.config.group for ls in loaded if ls.config.group} == {
        "inventory": "inventory-group", "email": "email-group", "analytics": "analytics-group",
        "billing": "billing-group", "notification": "notification-group"}


def test_consumer_without_group_is_reported():
    problems = problems_of({"topics": {"order-events": {"partitions": 3}},
                            "services": {"billing": {"module": "meshrun.services.billing"}}})
    assert "services.billing.group: missing (the service consumes order-events)" in problems
    assert "services.billing: topic 'invoice-events' is not declared (add a [topics.invoice-events] table)" \
        in problems


def test_same_port_twice_is_reported():
    problems = problems_of({"services": {"orders": {"module": "meshrun.examples.greeter", "port": 8081},
                                         "users": {"module": "meshrun.examples.greeter", "port": 8081}}})
    assert "port 8081 used by both orders and users" in problems


def test_unknown_transport_is_reported():
    problems = problems_of({"mesh": {"transport": "kafak"}, "services": {"a": {"module": "x"}}})
    assert "mesh.transport: unknown transport 'kafak' (expected memory or kafka)" in problems


def test_unknown_keys_are_flagged_at_every_level():
    problems = problems_of({"mesh": {"transprot": "memory"}, "topics": {"t": {"partitons": 3}},
                            "services": {"a": {"module": "meshrun.examples.greeter", "prot": 1}}, "extra": 1})
    assert "mesh.transprot: unknown key" in problems
    assert "topics.t.partitons: unknown key" in problems
    assert "services.a.prot: unknown key" in problems
    assert "extra: unknown key" in problems


def test_wrong_types_and_values_name_the_key():
    problems = problems_of({"services": {"a": {"module": "m", "port": "8081", "replicas": 0}}})
    assert "services.a.port: expected int, got str '8081'" in problems
    assert "services.a.replicas: must be greater than 0, got 0" in problems


def test_module_that_cannot_be_imported_is_reported():
    problems = problems_of({"services": {"a": {"module": "no.such.module", "port": 1234}}})
    assert problems[0].startswith("services.a.module: cannot load 'no.such.module': ModuleNotFoundError")


def test_routes_without_port_are_reported():
    problems = problems_of({"topics": {"greetings": {}},
                            "services": {"g": {"module": "meshrun.examples.greeter", "group": "g"}}})
    assert "services.g.port: missing (the service declares HTTP routes)" in problems


def test_service_settings_are_typed():
    problems = problems_of({"topics": {"order-events": {}, "invoice-events": {}}, "services": {
        "billing": {"module": "meshrun.services.billing", "group": "b",
                    "settings": {"tax_rate_bp": "20%", "colour": "red"}}}})
    assert any(p.startswith("services.billing.settings.tax_rate_bp: expected <class 'int'>") for p in problems)
    assert any(p.startswith("services.billing.settings.colour: unknown key") for p in problems)


def test_invalid_toml_and_missing_file_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[mesh\n")
    with pytest.raises(ConfigError, match="bad.toml: 1 problem"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_only_and_except_select_services():
    config = load_config(ROOT / "services.toml")
    assert select(config, ["billing", "notification"]) == ["billing", "notification"]
    assert "billing" not in select(config, [], ["billing"])
    with pytest.raises(ConfigError, match="--only: unknown service 'biling'"):
        select(config, ["biling"])


def test_kafka_options_come_from_env(monkeypatch):
    monkeypatch.setenv("MESHRUN_KAFKA_BOOTSTRAP_SERVERS", "broker:9093")
    monkeypatch.setenv("MESHRUN_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    config = parse_config({"services": {"a": {"module": "m"}}, "transport": {"kafka": {"linger_ms": 0}}})
    assert config.kafka.bootstrap_servers == "broker:9093"
    assert config.kafka.options == {"linger_ms": 0, "security_protocol": "SASL_SSL"}
