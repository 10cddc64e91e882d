"""`instances = N`: one component table, N processes `ID.0` ... `ID.N-1`.

Each instance is a component of its own at run time (its own task, state,
restart policy, log and data directory), made from the table's config by
`expand`: its id is `ID.K`, `instance_of` is `ID`, and "{instance}" in the
plugin's `command`, `cwd` and `env` values (core.schema.INSTANCE_KEYS) and in
`health_cmd` reads K. A table without the key is one plain component `ID`, as it always was:
snapshot keys do not change for configs that do not use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from core.config import ComponentConfig, Config
from core.schema import INSTANCE_KEYS, MAX_INSTANCES

#: The child's environment variable that holds its instance index.
INSTANCE_ENV = "CONTROL_CENTER_INSTANCE"
PLACEHOLDER = "{instance}"


class ScaleError(ValueError):
    """A scale request that cannot be carried out; nothing changed."""


def instance_id(cid: str, k: int) -> str:
    return f"{cid}.{k}"


def _substitute(value: Any, k: str) -> Any:
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, k)
    if isinstance(value, list | tuple):
        return type(value)(_substitute(v, k) for v in value)
    if isinstance(value, Mapping):
        return {key: _substitute(v, k) for key, v in value.items()}
    return value


def substitute(options: Mapping[str, Any], k: int) -> Mapping[str, Any]:
    """The plugin's options of instance `k`: "{instance}" replaced in INSTANCE_KEYS."""
    index = str(k)
    return MappingProxyType({key: _substitute(v, index) if key in INSTANCE_KEYS else v
                             for key, v in options.items()})


def expand(cfg: ComponentConfig, count: int | None = None) -> list[ComponentConfig]:
    """The run-time components of one table: itself, or its `count` instances.

    `count` overrides the table's `instances` (a scale at run time); None
    keeps the table's own. An instance's config does not hold the count, so
    scaling leaves the surviving instances' configs equal (not restarted).
    """
    n = cfg.instances if count is None else count
    if n is None:
        return [cfg]
    return [replace(cfg, id=instance_id(cfg.id, k), instances=None, instance_of=cfg.id,
                    instance=k, options=substitute(cfg.options, k),
                    health_cmd=_substitute(cfg.health_cmd, str(k))) for k in range(n)]


def runtime(config: Config, counts: Mapping[str, int]) -> dict[str, ComponentConfig]:
    """Every run-time component of `config`, in file order; `counts` by scale."""
    out: dict[str, ComponentConfig] = {}
    for cid, cfg in config.components.items():
        count = counts.get(cid)
        if count is None and cfg.instances is None:
            out[cid] = cfg
            continue
        for inst in expand(cfg, count):
            out[inst.id] = inst
    return out


def groups(configs: Iterable[ComponentConfig]) -> dict[str, list[str]]:
    """Table id -> the run-time ids it stands for (a plain component: itself)."""
    out: dict[str, list[str]] = {}
    for cfg in configs:
        out.setdefault(cfg.instance_of or cfg.id, []).append(cfg.id)
    return out


def check_count(value: Any) -> int:
    """A scale request's count, or ScaleError saying what was expected.

    12.0 is 12 (JSON Schema counts it an integer); 2.5, "3", true are refused.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        got = "null" if value is None else repr(value) if isinstance(
            value, bool | float | str) else f"a JSON {type(value).__name__}"
        raise ScaleError(f"instances: expected an integer from 0 to {MAX_INSTANCES}, got "
                         f"{got[:40]}")
    if not 0 <= value <= MAX_INSTANCES:
        raise ScaleError(f"instances: expected an integer from 0 to {MAX_INSTANCES}, got "
                         f"{value}")
    return value


#: A group's state when its instances differ: the first of these that one has.
_STATE_ORDER = ("error", "stopping", "starting", "running", "stopped")


def group_view(cfg: ComponentConfig, members: Mapping[str, Mapping[str, Any]]
               ) -> dict[str, Any]:
    """A component with instances as REST shows `ID`: a summary and each instance."""
    states = {m["state"] for m in members.values()}
    state = next((s for s in _STATE_ORDER if s in states), "stopped")
    running = sum(1 for m in members.values() if m.get("pid") is not None)
    return {"name": cfg.name, "state": state, "plugin": cfg.plugin,
            "instances": len(members), "running": running,
            "depends_on": list(cfg.depends_on), "components": dict(members)}
