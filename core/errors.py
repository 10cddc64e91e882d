"""The few error types of the core, named for who is at fault."""

from __future__ import annotations

from collections.abc import Iterable


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `word`, if any is close enough to be a typo."""
    import difflib  # only once there is a mistake to name

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """"; did you mean 'X'?" for the closest choice, or "" when none is close."""
    hint = closest(word, choices)
    return f"; did you mean {hint!r}?" if hint else ""


class ConfigError(Exception):
    """The operator's config is wrong: names the file, the key path and what was expected."""

    def __init__(self, path: str, key: str | None, message: str) -> None:
        self.path = path
        self.key = key
        self.message = message
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {message}")


class OptionError(ValueError):
    """A plugin-specific option is wrong; raised by `validate_config` hooks.

    `key` is the option's name within the component's table (e.g. "port");
    the core prefixes it with `components.<id>.` and the file name.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class UnknownComponent(LookupError):
    """A request named a component id that the config does not declare."""

    def __init__(self, component_id: str) -> None:
        self.component_id = component_id
        super().__init__(f"no component with id {component_id!r}")


class ShuttingDown(RuntimeError):
    """A start or restart arrived after shutdown began; it is refused, nothing changes."""

    def __init__(self, component_id: str) -> None:
        self.component_id = component_id
        super().__init__(f"not starting {component_id!r}: the supervisor is shutting down")


class PluginError(RuntimeError):
    """A plugin hook raised, hung or returned something it must not."""
