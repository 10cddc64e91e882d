"""`python -m core new-plugin NAME`: a complete third-party plugin package to start from.

    control-center-NAME/
        pyproject.toml          the entry point: NAME = "cc_NAME"
        README.md
        cc_NAME/__init__.py     the hooks: validate_config, start, probe, stop
        cc_NAME/service.py      the supervised program: a small TCP service
        tests/test_cc_NAME.py   its tests, with a real core (core.testing)

The three names differ on purpose: the distribution (control-center-NAME)
is what pip installs, the module (cc_NAME) what Python imports, and the
entry point (NAME) what config.toml's `plugin = "NAME"` names.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from string import Template

NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")


class ScaffoldError(Exception):
    """The name is not usable or the target directory exists."""


def names(name: str) -> dict[str, str]:
    """The entry point, module and distribution names for plugin `name`."""
    if not NAME.fullmatch(name):
        raise ScaffoldError(f"expected a plugin name of lower-case letters, digits and '_' "
                            f"starting with a letter, got {name!r}")
    return {"name": name, "module": f"cc_{name}",
            "dist": f"control-center-{name.replace('_', '-')}"}


def create(name: str, parent: str | Path = ".") -> Path:
    """Write the package for plugin `name` under `parent`; its directory."""
    values = names(name)
    root = Path(parent) / values["dist"]
    if root.exists():
        raise ScaffoldError(f"{root} exists already; choose another directory or name")
    module = values["module"]
    layout = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"{module}/__init__.py": "plugin.py.tmpl",
        f"{module}/service.py": "service.py.tmpl",
        f"tests/test_{module}.py": "test_plugin.py.tmpl",
    }
    templates = files("core") / "templates"
    for target, template in layout.items():
        text = Template((templates / template).read_text(encoding="utf-8"))
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.substitute(values), encoding="utf-8")
    return root
