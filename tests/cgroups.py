"""Whether this machine lets the tests make cgroups (root, or a delegated subtree)."""

from __future__ import annotations

import functools
import os
import uuid

from core import cgroup


@functools.cache
def why_not() -> str | None:
    """None if this process can make cgroups, else why not (asked once)."""
    tree, why = cgroup.open_tree(f"control-center-probe-{uuid.uuid4().hex[:8]}")
    if tree is None:
        return why
    os.rmdir(tree.base)
    return None
