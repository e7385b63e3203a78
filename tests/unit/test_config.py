from __future__ import annotations

import ipaddress

import pytest

from supervisor.config import PEER_DEFAULTS, ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    for name in (
        "PORT",
        "DATABASE_URL",
        "PRIVILEGED_IPS",
        "ADMIN_TOKEN",
        "CELERY_BROKER_URL",
        "REDIS_URL",
        *(key.upper() for key in PEER_DEFAULTS),
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_follow_the_contract() -> None:
    settings = load_settings()
    assert settings.port == 7500
    assert settings.mongodb_service == "http://127.0.0.1:12000"
    assert settings.auth_service == "http://127.0.0.1:10000"
    assert settings.blob_service == "http://127.0.0.1:13000"
    assert settings.user_service == "http://127.0.0.1:8500"
    assert settings.user_manager_service == "http://127.0.0.1:7000"
    assert settings.privileged_ips == (ipaddress.ip_network("127.0.0.1/32"),)
    assert settings.admin_token is None


@pytest.mark.parametrize("value", ["", "   ", "ftp://x", "127.0.0.1:9000", "blob-service"])
def test_peer_url_that_is_empty_or_not_http_falls_back(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("BLOB_SERVICE", value)
    assert load_settings().blob_service == "http://127.0.0.1:13000"


def test_peer_url_is_taken_when_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER_SERVICE", "https://users.internal:8443/")
    assert load_settings().user_service == "https://users.internal:8443"


def test_privileged_ips_take_addresses_and_cidrs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVILEGED_IPS", "127.0.0.1, 10.0.0.0/8,::1")
    assert [str(n) for n in load_settings().privileged_ips] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
    ]


def test_celery_broker_defaults_to_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    assert load_settings().broker_url == "redis://cache:6379/2"
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://rabbit//")
    assert load_settings().broker_url == "amqp://rabbit//"


def test_database_url_forms_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db/x")
    assert load_settings().database_url == "postgresql+psycopg://u@db/x"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "seventy"),
        ("PORT", "70000"),
        ("PRIVILEGED_IPS", "not-an-ip"),
        ("DATABASE_URL", "mysql://x"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_dotenv_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("PORT=7600\n")
    assert load_settings().port == 7600


def test_secrets_do_not_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "tok-123")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:pw-456@db/x")
    text = repr(load_settings())
    assert "tok-123" not in text
    assert "pw-456" not in text
