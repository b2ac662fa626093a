"""The shared state: one DuckDB file under a file lock. Only this package talks to DuckDB."""

from state.errors import (
    BadRequestError,
    ConflictError,
    InvalidValueError,
    NotFoundError,
    PermissionDeniedError,
    StateBusyError,
    StateError,
    StateOwnedElsewhere,
    StateUnavailableError,
    UnknownTokenError,
)

__all__ = [
    "BadRequestError",
    "ConflictError",
    "InvalidValueError",
    "NotFoundError",
    "PermissionDeniedError",
    "StateBusyError",
    "StateError",
    "StateOwnedElsewhere",
    "StateUnavailableError",
    "UnknownTokenError",
]
