"""The supervisor: one task per component, restart policy, the snapshot tick.

PUBLIC API (used by the web layer and the CLI; signatures are stable):

    sup = Supervisor(config, plugins, hub)
    async with trio.open_nursery() as n:
        await n.start(sup.run)          # starts autostart components in
                                        # dependency order, then ticks
    sup.config                          # the current Config (frozen)
    sup.component_ids() -> list[str]    # in config order
    sup.view(cid) -> dict               # one component as in the snapshot,
                                        # plus: plugin, restarts, exit_code,
                                        # health, next_restart_in, depends_on
                                        # raises UnknownComponent
    await sup.start(cid) -> dict        # returns view(cid) once the component
    await sup.stop(cid) -> dict         # has left its previous state; start
    await sup.restart(cid) -> dict      # of a running one / stop of a stopped
                                        # one are no-ops; UnknownComponent
    await sup.reload() -> dict          # re-read config.path; {"added": [...],
                                        # "removed": [...], "changed": [...],
                                        # "unchanged": [...]}; ConfigError
                                        # leaves everything as it was
    sup.log(cid) -> LogTail             # the component's output (core.logs)
    await sup.shutdown()                # stop all in reverse dependency order
"""
