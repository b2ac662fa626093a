"""Every console command: importing the command modules registers them (:mod:`moreh_tools.smclient.registry`).

Apart from the registry so that the command modules, which import the registry, are imported by no module
they import: a caller loads the catalogue once, then looks commands up in the registry.
"""

from __future__ import annotations

from moreh_tools.smclient.registry import REGISTRY, Command


def load_commands() -> dict[str, Command]:
    """Import every command module (each registers its commands) and return the table."""
    from moreh_tools.smclient.commands import (  # noqa: F401
        backends,
        checks,
        groups,
        guardian,
        jobs,
        quotas,
        sdas,
        system,
        tokens,
        versions,
    )

    return REGISTRY
