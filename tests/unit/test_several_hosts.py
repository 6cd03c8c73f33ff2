"""The pure parts of chatsvc.hosts and OLLAMA_HOST's list."""

from __future__ import annotations

import pytest

from chatsvc.config import ConfigError, HostEntry, load, parse_hosts
from chatsvc.hosts import (
    View,
    canonical,
    choose,
    conversation,
    lowest_version,
    merge,
    next_probe,
)


def test_a_list_of_hosts_each_with_its_parallel() -> None:
    assert parse_hosts("http://gpu1:11434?parallel=2, gpu2 ,127.0.0.1:9") == (
        HostEntry("http://gpu1:11434", "gpu1:11434", 2),
        HostEntry("http://gpu2:11434", "gpu2:11434", None),
        HostEntry("http://127.0.0.1:9", "127.0.0.1:9", None),
    )


@pytest.mark.parametrize(
    "value",
    ["a?parallel=0", "a?parallel=x", "a?threads=2", "a,,b", "a, a:11434", "a b"],
)
def test_a_bad_entry_stops_start_up_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="^OLLAMA_HOST="):
        load({"OLLAMA_HOST": value, "CHATSVC_REDIS_URL": "redis://x"})


def test_one_host_stays_the_string_it_was() -> None:
    assert load({"OLLAMA_HOST": "gpu-box:11434"})["OLLAMA_HOST"] == "gpu-box:11434"


def test_new_variables_have_api_md_defaults() -> None:
    config = load({})
    assert config["CHATSVC_MAX_QUEUE"] == 256
    assert config["CHATSVC_DISCOVERY_S"] == 30.0
    assert config["CHATSVC_PROBE_S"] == 5.0


def test_x_and_x_latest_are_one_model() -> None:
    assert canonical("Llama3.2") == canonical("llama3.2:latest") == "llama3.2:latest"
    assert canonical("hf.co/me/m:q4") == "hf.co/me/m:q4"


def view(name: str, parallel: int | None, n: int, loaded=False, last=False) -> View:
    return View(name, parallel, n, loaded, last)


def test_choice_order_free_then_loaded_then_conversation_then_fewest() -> None:
    assert choose([view("full", 1, 1, loaded=True), view("free", 2, 1)]) == [
        "free",
        "full",
    ]
    assert choose([view("cold", 2, 0), view("warm", 2, 1, loaded=True)]) == [
        "warm",
        "cold",
    ]
    assert choose([view("x", 4, 0), view("mine", 4, 2, last=True)]) == ["mine", "x"]
    assert choose([view("two", 4, 2), view("one", 4, 1)]) == ["one", "two"]
    assert choose([view("small", 1, 0), view("big", 2, 0)]) == ["big", "small"]
    # Without parallel a host is never full.
    assert choose([view("full", 1, 1), view("open", None, 9)])[0] == "open"


def test_a_conversation_is_its_first_user_message_and_system_prompt() -> None:
    first = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
        ]
    }
    later = {"messages": [*first["messages"], {"role": "assistant", "content": "a"},
                          {"role": "user", "content": "q2"}]}  # fmt: skip
    other = {"messages": [{"role": "user", "content": "q"}]}
    assert conversation(first) == conversation(later) != conversation(other)
    assert conversation({"prompt": "q", "system": "s"}) == conversation(first)
    assert conversation({"messages": []}) is None


def test_merged_lists_hold_each_model_once_newest_first() -> None:
    jan = "2026-01-01T00:00:00.123456789Z"
    mar = "2026-03-01T00:00:00Z"
    a = {"models": [{"name": "llama3.2:latest", "modified_at": jan},
                    {"name": "qwen3:latest", "modified_at": mar}]}  # fmt: skip
    b = {"models": [{"name": "llama3.2", "modified_at": "2026-02-01T00:00:00+01:00"}]}
    merged = merge([a, b], "models", ("name", "model", "modified_at"))
    assert [m["name"] for m in merged["models"]] == ["qwen3:latest", "llama3.2"]
    one = {
        "object": "list",
        "data": [{"id": "m", "created": 1}, {"id": "n", "created": 3}],
    }
    two = {"object": "list", "data": [{"id": "m:latest", "created": 2}]}
    openai = merge([one, two], "data", ("id", "created"))
    assert openai == {
        "object": "list",
        "data": [{"id": "n", "created": 3}, {"id": "m:latest", "created": 2}],
    }


def test_the_lowest_version() -> None:
    assert lowest_version(["0.12.10", "0.9.1", "0.12.6"]) == "0.9.1"
    assert lowest_version(["0.13.0-rc1", "0.12.9"]) == "0.12.9"


def schedule(first: float, probes: int) -> list[float]:
    """The intervals between probes of a host that stays down."""
    intervals = [first]
    while len(intervals) < probes:
        intervals.append(next_probe(intervals[-1]))
    return intervals


def test_a_down_host_is_probed_from_probe_s_doubling_to_a_minute() -> None:
    assert schedule(5.0, 7) == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert schedule(0.5, 9) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
