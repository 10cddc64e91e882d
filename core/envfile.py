"""A component's `env_file`: dotenv files read at config load.

python-dotenv parses them (comments, quotes, `export`, `${VAR}`
interpolation) rather than a parser of our own. The values are part of the
component's config: a reload that finds a file changed restarts the
component, as for any other key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class EnvFileError(Exception):
    """One file could not be used; `index` is its place in the list (None: a lone string)."""

    def __init__(self, index: int | None, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def read_env_files(paths: Sequence[Path], *, listed: bool) -> dict[str, str]:
    """The variables of `paths` in order, a later file winning over an earlier one.

    A name without a value (`KEY` alone on its line) takes the supervisor's
    own value, or is left out when the supervisor has none.
    """
    env: dict[str, str] = {}
    for i, path in enumerate(paths):
        where = i if listed else None
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise EnvFileError(where, f"expected a dotenv file, {path} {what}")
        try:
            with path.open(encoding="utf-8") as stream:
                from dotenv import dotenv_values  # only for a component with env_file

                values = dotenv_values(stream=stream)
        except (OSError, UnicodeDecodeError) as exc:
            raise EnvFileError(where, f"cannot read {path}: "
                                      f"{getattr(exc, 'strerror', None) or exc}") from None
        for name, value in values.items():
            if value is None:
                value = os.environ.get(name)
                if value is None:
                    continue
            if not name or "=" in name or "\0" in name or "\0" in value:
                raise EnvFileError(where, f"{path}: {name!r} cannot be an environment "
                                          "variable (no '=' or NUL bytes)")
            env[name] = value
    return env
