"""What switching a child's user costs per spawn: setpriv's options or subprocess's.

    sudo .venv/bin/python bench/spawn_user_bench.py     # needs root

Three ways to start `true` the way core.spawn does (setpriv --pdeathsig, then
sh's parent check): as the supervisor itself ("plain"), as nobody through
setpriv's --reuid/--regid/--init-groups ("setpriv"), and as nobody through
subprocess's user=/group=/extra_groups= ("subprocess", which makes
subprocess fork() instead of vfork()). Interleaved, 200 rounds, in a process
that imports what the supervisor imports (its size is what a fork copies).
Popen() is the time the event loop is held; spawn-to-exit includes the
exec of setpriv, sh and true.

Then the same through a real Supervisor: two `sleep` components, one as
the supervisor's user and one with user = "nobody", restarted alternately
(Supervisor.restart until the new pid is running), 100 times each.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time

import docker  # noqa: F401
import psutil

import core.app
import core.cli
import core.web.app  # noqa: F401

print("rss MB", round(psutil.Process().memory_info().rss / 2**20, 1))
SH = "/bin/sh"
CHECK = f'[ "$PPID" = {os.getpid()} ] || exit 1; exec "$@"'
WRAP = ["setpriv", "--pdeathsig", "KILL"]
TAIL = ["--", SH, "-c", CHECK, "cc", "true"]
NOBODY = 65534


def run(variant: str) -> tuple[float, float]:
    """(seconds in Popen(), seconds from spawn to exit) for one spawn."""
    kw: dict[str, object] = {}
    argv = [*WRAP, *TAIL]
    if variant == "setpriv":
        argv = [*WRAP, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--init-groups", *TAIL]
    elif variant == "subprocess":
        kw = {"user": NOBODY, "group": NOBODY, "extra_groups": [NOBODY]}
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                         **kw)  # type: ignore[call-overload]
    t1 = time.perf_counter()
    p.communicate()
    assert p.returncode == 0, variant
    return t1 - t0, time.perf_counter() - t0


async def restarts(rounds: int = 100) -> None:
    import tempfile
    from pathlib import Path

    import trio

    from core.config import load
    from core.plugins import PluginManager
    from core.supervisor import Supervisor

    with tempfile.TemporaryDirectory(dir="/tmp") as where:
        os.chmod(where, 0o755)
        path = Path(where) / "config.toml"
        path.write_text("".join(
            f'[components.{cid}]\nplugin = "process"\ncommand = ["sleep", "600"]\n{extra}\n'
            for cid, extra in (("self", ""), ("nobody", 'user = "nobody"'))))
        plugins = PluginManager(load_entry_points=False)
        sup = Supervisor(load(path, plugins=plugins.names, validate=plugins.validate), plugins)
        took: dict[str, list[float]] = {"self": [], "nobody": []}
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            for _ in range(rounds):
                for cid, found in took.items():
                    while sup.view(cid)["state"] != "running":
                        await trio.sleep(0.005)
                    old = sup.view(cid)["pid"]
                    t0 = time.perf_counter()
                    await sup.restart(cid)
                    while sup.view(cid)["pid"] in (None, old) or \
                            sup.view(cid)["state"] != "running":
                        await trio.sleep(0.001)
                    found.append(time.perf_counter() - t0)
            await sup.shutdown()
            nursery.cancel_scope.cancel()
    for cid, found in took.items():
        print(f"restart as {cid:6s} median {statistics.median(found) * 1e3:.2f} ms  "
              f"p90 {sorted(found)[int(len(found) * 0.9)] * 1e3:.2f} ms")


def main() -> None:
    res: dict[str, tuple[list[float], list[float]]] = {
        v: ([], []) for v in ("plain", "setpriv", "subprocess")}
    for _ in range(200):
        for variant, (in_popen, total) in res.items():
            a, b = run(variant)
            in_popen.append(a)
            total.append(b)
    for variant, (in_popen, total) in res.items():
        print(f"{variant:11s} Popen() median {statistics.median(in_popen) * 1e3:.2f} ms  "
              f"spawn-to-exit median {statistics.median(total) * 1e3:.2f} ms")


if __name__ == "__main__":
    import trio

    main()
    trio.run(restarts)
