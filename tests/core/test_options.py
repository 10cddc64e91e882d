"""OptionReader: required keys, defaults, types and inclusive ranges."""

from __future__ import annotations

import pytest

from core import OptionError, OptionReader


def test_a_present_value_equal_to_the_default_is_still_range_checked() -> None:
    with pytest.raises(OptionError, match=r"port: expected an integer from 1 to 65535, got 0"):
        OptionReader({"port": 0}).integer("port", 0, minimum=1, maximum=65535)
    with pytest.raises(OptionError, match=r"expected an integer >= 1, got 0"):
        OptionReader({"port": 0}).integer("port", 0, minimum=1)
    with pytest.raises(OptionError, match=r"expected a number <= 1.0, got 5"):
        OptionReader({"ratio": 5}).number("ratio", 5, maximum=1.0)


def test_an_absent_key_returns_the_default_as_given() -> None:
    opts = OptionReader({})
    assert opts.integer("port", 0, minimum=1) == 0
    assert opts.number("ratio", None, minimum=0) is None
    assert opts.string("name", None) is None
    assert opts.command("command", None) is None
    assert opts.keys == {"port", "ratio", "name", "command"}
    opts.finish()


def test_no_default_means_required() -> None:
    with pytest.raises(OptionError, match="port: is required"):
        OptionReader({}).integer("port")


@pytest.mark.parametrize(("value", "words"), [
    (29612.0, "expected an integer, got a float (29612.0)"),
    (True, "expected an integer, got a boolean (True)"),
    ("80", "expected an integer, got a string ('80')"),
])
def test_integer_refuses_other_types_in_the_core_wording(value: object, words: str) -> None:
    with pytest.raises(OptionError) as info:
        OptionReader({"port": value}).integer("port", 80)
    assert info.value.message == words


def test_bounds_are_inclusive_and_numbers_come_back_as_floats() -> None:
    opts = OptionReader({"a": 1, "b": 65535, "c": 2})
    assert opts.integer("a", minimum=1, maximum=65535) == 1
    assert opts.integer("b", minimum=1, maximum=65535) == 65535
    value = opts.number("c", minimum=2, maximum=2)
    assert value == 2.0 and isinstance(value, float)


def test_number_refuses_nan_and_infinity() -> None:
    for bad in (float("nan"), float("inf")):
        with pytest.raises(OptionError, match="finite"):
            OptionReader({"x": bad}).number("x", 1.0)


def test_finish_names_the_valid_keys_and_suggests_the_closest() -> None:
    opts = OptionReader({"prot": 1})
    opts.integer("port", 8080)
    with pytest.raises(OptionError) as info:
        opts.finish()
    assert info.value.key == "prot"
    assert info.value.message == "unknown key (valid keys: port); did you mean 'port'?"


def test_command_and_string_table() -> None:
    opts = OptionReader({"cmd": "python -m 'a b'", "env": {"A": "1"}})
    assert opts.command("cmd") == ["python", "-m", "a b"]
    assert opts.string_table("env") == {"A": "1"}
    with pytest.raises(OptionError, match=r"env\.A: expected a string, got an integer \(1\)"):
        OptionReader({"env": {"A": 1}}).string_table("env", {})
    with pytest.raises(OptionError, match="non-empty"):
        OptionReader({"cmd": []}).command("cmd")
