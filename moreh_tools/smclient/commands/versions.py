"""Worker version and worker environment commands, and the server version."""

from __future__ import annotations

import platform

from moreh_tools import __version__
from moreh_tools.grid import Column
from moreh_tools.smclient.args import to_bool
from moreh_tools.smclient.output import Message, Output, Table
from moreh_tools.smclient.registry import Context, command
from state.records import Version

VERSION_COLUMNS = [
    Column("Version"),
    Column("Supported"),
    Column("Latest"),
    Column("Installed Path"),
    Column("Query Command"),
    Column("Worker Command"),
    Column("Health Check Command"),
    Column("Worker ENV"),
]


def version_table(versions: list[Version]) -> Table:
    """All versions as a grid."""
    return Table(
        VERSION_COLUMNS,
        [
            [
                v.version,
                str(v.supported),
                str(v.latest),
                v.path,
                v.query_command,
                v.worker_command,
                v.health_check_command,
                ", ".join(f"{k}={val}" for k, val in v.env),
            ]
            for v in versions
        ],
        [
            {
                "version": v.version,
                "supported": v.supported,
                "latest": v.latest,
                "path": v.path,
                "query_command": v.query_command,
                "worker_command": v.worker_command,
                "health_check_command": v.health_check_command,
                "env": dict(v.env),
            }
            for v in versions
        ],
    )


@command("create version", "Create Version", "create version {version} {installed path}")
def create_version(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.versions.create(args[0], args[1])
    return Message("Create Version success.")


@command("delete version", "Delete Version", "delete version {version}")
def delete_version(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.versions.delete(args[0])
    return Message("Delete Version success.")


@command("show version", "Show Version Information", "show version {version : optional}")
def show_version(ctx: Context, args: list[str]) -> Output:
    with ctx.read() as s:
        return version_table(s.versions.all(args[0] if args else None))


def _command_setter(which: str, description: str) -> None:
    @command(f"update version {which}", description, f"update version {which} {{version}} {{command}}")
    def update(ctx: Context, args: list[str]) -> Output:
        with ctx.write() as s:
            s.versions.set_command(args[0], which, args[1])
        return Message("Update Version success.")


_command_setter("health_check", "Update version health check GPU command")
_command_setter("query", "Update each version of worker query execution command")
_command_setter("worker", "Update each version of worker execution command")


@command("update version latest", "Update Version Supported", "update version latest {version}")
def update_version_latest(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.versions.set_latest(args[0])
    return Message("Update Version success.")


@command(
    "update version path",
    "Update version working directory",
    "update version path {version} {installed path}",
)
def update_version_path(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.versions.set_path(args[0], args[1])
    return Message("Update Version success.")


@command(
    "update version support",
    "Update Version Supported",
    "update version support {version} {supported [true|false]}",
)
def update_version_support(ctx: Context, args: list[str]) -> Output:
    supported = to_bool(args[1], "supported flag")
    with ctx.write() as s:
        s.versions.set_supported(args[0], supported)
    return Message("Update Version success.")


@command(
    "add worker env",
    "Add each version of worker execution environment variable",
    "add worker env {version} {name} {value}",
)
def add_worker_env(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.versions.add_env(args[0], args[1], args[2])
    return Message("Add Worker Env success.")


@command(
    "remove worker env",
    "Remove each version of worker execution environment variable",
    "remove worker env {version} {name}",
)
def remove_worker_env(ctx: Context, args: list[str]) -> Output:
    with ctx.write() as s:
        s.versions.remove_env(args[0], args[1])
    return Message("Remove Worker Env success.")


@command("show server version", "Show Server Version Information")
def show_server_version(ctx: Context, args: list[str]) -> Output:
    from state.paths import state_file

    with ctx.read() as s:
        schema = s.schema_version()
        latest = s.versions.latest()
    pairs = [
        ("Server", f"moreh-tools {__version__}"),
        ("Latest Worker", latest or ""),
        ("State Schema", str(schema)),
        ("State File", str(state_file(ctx.service.home))),
        ("Python", platform.python_version()),
    ]
    return Table([Column("Name"), Column("Value")], [list(p) for p in pairs], [dict(pairs)])
