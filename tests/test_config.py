"""Settings: argument, then ``CMS_*`` environment, then default; refused early when unworkable.

A bad setting must fail at construction with ``ConfigurationError``, before a database
file is created or a thread is started, not on the thousandth flush.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from cms_outbox import CMSClient, ConfigurationError
from cms_outbox.config import DEFAULT_DATABASE_URL, DEFAULT_HOST, Settings, resolve
from cms_outbox.pacing import Mode, RateLimit

PRECEDENCE = [
    ("token", "CMS_BEARER_TOKEN", None),
    ("host", "CMS_HOST", DEFAULT_HOST),
    ("database_url", "CMS_OUTBOX_URL", DEFAULT_DATABASE_URL),
]
VALUES = {
    "token": ("token-from-argument", "token-from-env"),
    "host": ("https://argument.example.com", "https://env.example.com"),
    "database_url": ("sqlite:///argument.db", "sqlite:///env.db"),
}


@pytest.mark.parametrize(("key", "variable", "default"), PRECEDENCE)
def test_argument_beats_environment_beats_default(key: str, variable: str, default: Any) -> None:
    argument, from_env = VALUES[key]
    environ = {variable: from_env}
    assert getattr(resolve(environ=environ, flush="off", **{key: argument}), key) == argument
    assert getattr(resolve(environ=environ, flush="off"), key) == from_env
    assert getattr(resolve(environ={}, flush="off"), key) == default
    assert getattr(resolve(environ={variable: ""}, flush="off"), key) == default  # empty = unset


@pytest.mark.parametrize(("key", "variable", "default"), PRECEDENCE)
def test_none_argument_means_unset(key: str, variable: str, default: Any) -> None:
    """``CMSClient(token=None)`` must fall back to the environment, as the SDK's users expect."""
    _, from_env = VALUES[key]
    assert (
        getattr(resolve(environ={variable: from_env}, flush="off", **{key: None}), key) == from_env
    )


def test_process_environment_is_read_when_none_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMS_HOST", "https://env.example.com")
    monkeypatch.setenv("CMS_BEARER_TOKEN", "token-from-env")
    settings = resolve(flush="background")
    assert (settings.host, settings.token) == ("https://env.example.com", "token-from-env")


def test_client_takes_token_and_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    monkeypatch.setenv("CMS_OUTBOX_URL", sqlite_url)
    monkeypatch.setenv("CMS_BEARER_TOKEN", "token-from-env")
    with CMSClient(flush="off") as client:
        assert client.settings.token == "token-from-env"
        assert str(client.engine.url) == sqlite_url


# -- the host ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["http://api.cme.sh", "http://10.0.0.5:8080", "http://example.com", "http://[2001:db8::1]"],
)
def test_plain_http_to_a_remote_host_is_refused(host: str) -> None:
    """The bearer token would cross the network in clear text."""
    with pytest.raises(ConfigurationError, match="allow_insecure"):
        resolve(environ={}, host=host, flush="off")


@pytest.mark.parametrize(
    "host",
    ["http://127.0.0.1:8080", "http://127.0.0.2", "http://localhost:5000", "http://[::1]:8000"],
)
def test_plain_http_to_loopback_is_accepted(host: str) -> None:
    """The sandbox and local proxies listen there."""
    assert resolve(environ={}, host=host, flush="off").host == host


def test_allow_insecure_accepts_plain_http_anywhere() -> None:
    settings = resolve(environ={}, host="http://example.com", allow_insecure=True, flush="off")
    assert settings.host == "http://example.com"


@pytest.mark.parametrize("host", ["https://example.com", "https://10.0.0.5:8443"])
def test_https_is_accepted_anywhere(host: str) -> None:
    assert resolve(environ={}, host=host, flush="off").host == host


@pytest.mark.parametrize(
    "host", ["api.cme.sh", "ftp://api.cme.sh", "https://", "", 443, "https://[::1"]
)
def test_host_must_be_an_http_url(host: Any) -> None:
    with pytest.raises(ConfigurationError, match="host"):
        Settings(host=host, flush="off")


def test_insecure_host_from_the_environment_is_refused_too() -> None:
    with pytest.raises(ConfigurationError):
        resolve(environ={"CMS_HOST": "http://api.cme.sh"}, flush="off")


# -- the token and the flusher ---------------------------------------------------------------


def test_background_flush_needs_a_token() -> None:
    with pytest.raises(ConfigurationError, match="token"):
        resolve(environ={}, flush="background")


def test_client_without_token_fails_before_touching_the_database(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with pytest.raises(ConfigurationError, match="token"):
        CMSClient(database_url=f"sqlite:///{path}")  # flush="background" is the default
    assert not path.exists()


def test_enqueue_only_process_needs_no_token() -> None:
    assert resolve(environ={}, flush="off").token is None


def test_token_from_environment_satisfies_background_flush() -> None:
    settings = resolve(environ={"CMS_BEARER_TOKEN": "t0ken"}, flush="background")
    assert settings.token == "t0ken"


# -- choices and numbers ---------------------------------------------------------------------

BAD_SETTINGS = [
    ("flush", "Background"),
    ("flush", "on"),
    ("flush", ""),
    ("flush", False),
    ("durability", "FULL"),
    ("durability", "fast"),
    ("durability", 1),
    ("workers", 0),
    ("workers", -1),
    ("workers", 2.5),
    ("workers", "8"),
    ("workers", True),
    ("rate_limit", -1),
    ("rate_limit", "60"),
    ("interval", 0),
    ("interval", "1"),
    ("read_timeout", -1.0),
    ("max_age", float("nan")),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_bad_value_is_a_configuration_error_naming_the_setting(name: str, value: Any) -> None:
    arguments: dict[str, Any] = {"flush": "off", name: value}
    with pytest.raises(ConfigurationError, match=name) as caught:
        resolve(environ={}, **arguments)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS[:8])
def test_client_refuses_bad_values_at_construction(tmp_path: Path, name: str, value: Any) -> None:
    path = tmp_path / "outbox.db"
    arguments: dict[str, Any] = {"flush": "off", name: value}
    with pytest.raises(ConfigurationError):
        CMSClient(database_url=f"sqlite:///{path}", **arguments)
    assert not path.exists()


@pytest.mark.parametrize(
    ("rate_limit", "mode"),
    [(60, Mode.CEILING), ("auto", Mode.AUTO), (0, Mode.UNPACED), (None, Mode.UNPACED)],
)
def test_rate_limit_zero_or_none_disables_pacing(
    tmp_path: Path, rate_limit: int | str | None, mode: Mode
) -> None:
    with CMSClient(database_url=f"sqlite:///{tmp_path}/o.db", flush="off",
                   rate_limit=rate_limit) as client:  # fmt: skip
        assert client.settings.rate_limit.mode is mode
        assert client.settings.rate_limit.paced is (mode is not Mode.UNPACED)


def test_rate_limit_defaults_to_auto_and_unset_means_unset() -> None:
    assert resolve(environ={}, flush="off").rate_limit == RateLimit.parse("auto")
    assert resolve(environ={}, flush="off", rate_limit=None).rate_limit.mode is Mode.AUTO


def test_lease_must_outlive_one_http_attempt() -> None:
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        resolve(environ={}, flush="off", connect_timeout=3, read_timeout=10, lease_seconds=12)
    assert resolve(environ={}, flush="off", read_timeout=10, lease_seconds=60).lease_duration == 60


def test_settings_are_frozen() -> None:
    settings = resolve(environ={}, flush="off")
    with pytest.raises(AttributeError):
        settings.workers = 1  # type: ignore[misc]


# -- the database URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite+pysqlite:///:memory:",
        "sqlite:///file:x?mode=memory&uri=true",
    ],
)
def test_in_memory_sqlite_is_refused(url: str) -> None:
    """Events must survive the process: an in-memory outbox would lose them all."""
    with pytest.raises(ConfigurationError, match="in-memory"):
        CMSClient(database_url=url, flush="off")


@pytest.mark.parametrize("url", ["not a url", "nosuchdialect://x/y"])
def test_unusable_database_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        CMSClient(database_url=url, flush="off")


@pytest.mark.parametrize("url", ["postgresql://u:sekrit@db:abc/app", "postgresql//u:sekrit@db/app"])
def test_a_malformed_database_url_is_refused_without_its_password(url: str) -> None:
    """A port that is not a number raised SQLAlchemy's ValueError; the message quoted the
    password of a URL it could not parse."""
    with pytest.raises(ConfigurationError, match="invalid database URL") as raised:
        CMSClient(database_url=url, flush="off")
    assert "sekrit" not in str(raised.value)
    assert "u:***@db" in str(raised.value)


def test_a_scheme_without_its_driver_names_the_url_to_use() -> None:
    """Heroku's postgres:// and a bare mysql:// gave SQLAlchemy's plugin or import error."""
    with pytest.raises(ConfigurationError, match=r"use sqlite:///, postgresql\+psycopg://"):
        CMSClient(database_url="postgres://u@127.0.0.1:1/app", flush="off")
    if importlib.util.find_spec("MySQLdb") is None:
        with pytest.raises(ConfigurationError, match=r"cms-outbox\[mysql\].*mysql\+pymysql://"):
            CMSClient(database_url="mysql://root@127.0.0.1:1/app", flush="off")


@pytest.mark.parametrize("token", ["sekrit\nX-Injected: 1", "sekrit with spaces", "sekrït"])
def test_a_token_unfit_for_a_header_is_refused_without_quoting_it(
    token: str, tmp_path: Path
) -> None:
    """It would fail at the first send, with the token in the error (and so in the log)."""
    outbox = tmp_path / "outbox.db"
    with pytest.raises(ConfigurationError, match="token") as raised:
        CMSClient(token=token, database_url=f"sqlite:///{outbox}", flush="off")
    assert "sekr" not in str(raised.value)
    assert not outbox.exists()  # refused before anything was written
