"""What the web layer needs of the supervisor: its public API, as a Protocol.

`core.supervisor.Supervisor` satisfies it; tests may serve a hub alone
(`supervisor=None`) when no endpoint of theirs reaches the supervisor.
"""

from __future__ import annotations

from typing import Any, Protocol

from core.logs import LogTail


class SupervisorAPI(Protocol):
    """The calls REST makes: read components, control them, reload the config."""

    def component_ids(self) -> list[str]: ...

    def view(self, cid: str) -> dict[str, Any]: ...

    def log(self, cid: str) -> LogTail: ...

    async def start(self, cid: str) -> dict[str, Any]: ...

    async def stop(self, cid: str) -> dict[str, Any]: ...

    async def restart(self, cid: str) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, list[str]]: ...

    async def scale(self, cid: str, count: int) -> dict[str, Any]: ...
