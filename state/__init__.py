"""The shared state: one DuckDB file under a file lock. Only this package talks to DuckDB."""

from state.errors import (
    ConflictError,
    InvalidValueError,
    NotFoundError,
    StateBusyError,
    StateError,
    StateUnavailableError,
)

__all__ = [
    "ConflictError",
    "InvalidValueError",
    "NotFoundError",
    "StateBusyError",
    "StateError",
    "StateUnavailableError",
]
