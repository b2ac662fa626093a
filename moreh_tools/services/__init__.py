"""The use cases of moreh-tools, written once: every CLI, API route and the dashboard call these.

A service function takes a :class:`~moreh_tools.services.context.ServiceContext` (the state, who is
asking, and how to wake waiting launchers) and keyword arguments, opens the transactions it needs,
and returns plain dataclasses (:mod:`moreh_tools.services.records`). It never prints, never reads the
environment for its rules, and raises only the state's error types (:mod:`state.errors`). Where it
runs depends on the port (:mod:`moreh_tools.port`): in the tool's own process against the state
file, or inside ``sdamanager`` for requests that came over its socket or HTTP.
"""
