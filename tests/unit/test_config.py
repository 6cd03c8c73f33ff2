from __future__ import annotations

import pytest

from chatsvc.config import ConfigError, load


def test_defaults() -> None:
    config = load({})
    assert config == {
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
        "CHATSVC_GRACEFUL_TIMEOUT_S": 30,
        "CHATSVC_CLIENT_TIMEOUT_S": 30.0,
    }


def test_values_are_parsed() -> None:
    config = load(
        {
            "CHATSVC_API_KEYS": "k1, k2,,",
            "CHATSVC_MODELS": "llama3.2,qwen3",
            "CHATSVC_DEFAULT_MODEL": "qwen3",
            "CHATSVC_HEARTBEAT_S": "0.5",
            "CHATSVC_MAX_STREAMS": "3",
            "OLLAMA_HOST": " gpu-box:11434 ",
        }
    )
    assert config["CHATSVC_API_KEYS"] == ("k1", "k2")
    assert config["CHATSVC_MODELS"] == ("llama3.2", "qwen3")
    assert config["CHATSVC_DEFAULT_MODEL"] == "qwen3"
    assert config["CHATSVC_HEARTBEAT_S"] == 0.5
    assert config["CHATSVC_MAX_STREAMS"] == 3
    assert config["OLLAMA_HOST"] == "gpu-box:11434"


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
        ("CHATSVC_GRACEFUL_TIMEOUT_S", "abc"),
        ("CHATSVC_GRACEFUL_TIMEOUT_S", "2.5"),
        ("CHATSVC_CLIENT_TIMEOUT_S", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}"):
        load({name: value})


def test_default_model_must_be_allowed() -> None:
    with pytest.raises(ConfigError, match="CHATSVC_DEFAULT_MODEL"):
        load({"CHATSVC_MODELS": "a,b", "CHATSVC_DEFAULT_MODEL": "c"})
