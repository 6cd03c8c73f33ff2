from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from chatsvc.config import VARIABLES, ConfigError, go_duration, load


def test_defaults() -> None:
    config = load({})
    assert set(config) == {name for name, _, _ in VARIABLES}
    assert (
        config.items()
        >= {
            "OLLAMA_HOST": "http://127.0.0.1:11434",
            "CHATSVC_API_KEYS": None,
            "CHATSVC_MODELS": None,
            "CHATSVC_DEFAULT_MODEL": None,
            "CHATSVC_CORS_ORIGINS": None,
            "CHATSVC_MAX_BODY_BYTES": 1_048_576,
            "CHATSVC_MAX_STREAMS": 256,
            "CHATSVC_MAX_STREAMS_PER_CLIENT": 8,
            "CHATSVC_HEARTBEAT_S": 10.0,
            "CHATSVC_UPSTREAM_TIMEOUT_S": 300.0,
            "CHATSVC_ADMIN_KEYS": None,
            "CHATSVC_MAX_KEEP_ALIVE": None,
            "CHATSVC_REDIS_URL": None,
            "CHATSVC_LEASE_S": 30.0,
            "CHATSVC_GRACEFUL_TIMEOUT_S": 30,
            "CHATSVC_CLIENT_TIMEOUT_S": 30.0,
        }.items()
    )


def test_values_are_parsed() -> None:
    config = load(
        {
            "CHATSVC_API_KEYS": "k1, k2,,",
            "CHATSVC_MODELS": "llama3.2,qwen3",
            "CHATSVC_DEFAULT_MODEL": "qwen3",
            "CHATSVC_HEARTBEAT_S": "0.5",
            "CHATSVC_MAX_STREAMS": "3",
            "OLLAMA_HOST": " gpu-box:11434 ",
            "CHATSVC_REDIS_URL": " rediss://:secret@store.example:6380/2 ",
            "CHATSVC_LEASE_S": "2.5",
        }
    )
    assert config["CHATSVC_API_KEYS"] == ("k1", "k2")
    assert config["CHATSVC_MODELS"] == ("llama3.2", "qwen3")
    assert config["CHATSVC_DEFAULT_MODEL"] == "qwen3"
    assert config["CHATSVC_HEARTBEAT_S"] == 0.5
    assert config["CHATSVC_MAX_STREAMS"] == 3
    assert config["OLLAMA_HOST"] == "gpu-box:11434"
    assert config["CHATSVC_REDIS_URL"] == "rediss://:secret@store.example:6380/2"
    assert config["CHATSVC_LEASE_S"] == 2.5


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "rediss://h", "unix:///run/valkey.sock"]
)
def test_store_urls(url: str) -> None:
    assert load({"CHATSVC_REDIS_URL": url})["CHATSVC_REDIS_URL"] == url


def test_empty_store_url_means_embedded() -> None:
    assert load({"CHATSVC_REDIS_URL": " "})["CHATSVC_REDIS_URL"] is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHATSVC_MAX_BODY_BYTES", "lots"),
        ("CHATSVC_MAX_BODY_BYTES", "-1"),
        ("CHATSVC_MAX_BODY_BYTES", "0"),
        ("CHATSVC_MAX_BODY_BYTES", "1.5"),
        ("CHATSVC_MAX_STREAMS", ""),
        ("CHATSVC_MAX_STREAMS_PER_CLIENT", "-3"),
        ("CHATSVC_HEARTBEAT_S", "soon"),
        ("CHATSVC_HEARTBEAT_S", "0"),
        ("CHATSVC_HEARTBEAT_S", "-2"),
        ("CHATSVC_HEARTBEAT_S", "nan"),
        ("CHATSVC_UPSTREAM_TIMEOUT_S", "inf"),
        ("OLLAMA_HOST", ""),
        ("OLLAMA_HOST", "http://a b"),
        ("CHATSVC_API_KEYS", ","),
        ("CHATSVC_ADMIN_KEYS", " , "),
        ("CHATSVC_MAX_KEEP_ALIVE", "forever"),
        ("CHATSVC_MAX_KEEP_ALIVE", "-1"),
        ("CHATSVC_MAX_KEEP_ALIVE", "5 minutes"),
        ("CHATSVC_REDIS_URL", "http://store:6379"),
        ("CHATSVC_REDIS_URL", "localhost:6379"),
        ("CHATSVC_REDIS_URL", "redis://store:port"),
        ("CHATSVC_REDIS_URL", "unix://"),
        ("CHATSVC_LEASE_S", "0"),
        ("CHATSVC_LEASE_S", "forever"),
        ("CHATSVC_GRACEFUL_TIMEOUT_S", "abc"),
        ("CHATSVC_GRACEFUL_TIMEOUT_S", "2.5"),
        ("CHATSVC_CLIENT_TIMEOUT_S", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}"):
        load({name: value})


def test_ssl_cert_file_must_hold_certificates(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    assert load({"SSL_CERT_FILE": str(ca)})["SSL_CERT_FILE"] == str(ca)
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate")
    for path in (tmp_path / "missing.pem", not_pem):
        with pytest.raises(ConfigError, match="^SSL_CERT_FILE=.*cannot load it"):
            load({"SSL_CERT_FILE": str(path)})


def test_default_model_must_be_allowed() -> None:
    with pytest.raises(ConfigError, match="CHATSVC_DEFAULT_MODEL"):
        load({"CHATSVC_MODELS": "a,b", "CHATSVC_DEFAULT_MODEL": "c"})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("600", 600.0), ("30m", 1800.0), ("1h30m", 5400.0), ("0", 0.0), ("1.5s", 1.5)],
)
def test_max_keep_alive(value: str, seconds: float) -> None:
    assert load({"CHATSVC_MAX_KEEP_ALIVE": value})["CHATSVC_MAX_KEEP_ALIVE"] == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("-1s", -1.0),
        ("-1", None),  # Go wants a unit on anything but 0
        ("0", 0.0),
        ("1h2m3s", 3723.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("", None),
        ("5 m", None),
        ("m", None),
        ("5x", None),
    ],
)
def test_go_duration(text: str, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(ValueError):
            go_duration(text)
    else:
        assert go_duration(text) == pytest.approx(seconds)
