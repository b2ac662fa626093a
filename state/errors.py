"""Errors raised by the state layer, each carrying a message written for the person at the prompt."""


class StateError(Exception):
    """Base class: the message is one line that says what was wrong and how to do it right."""


class NotFoundError(StateError):
    """A token, id or name that the command refers to does not exist."""


class ConflictError(StateError):
    """The request contradicts the current state (already exists, still in use, ...)."""


class InvalidValueError(StateError):
    """A value is outside what the seeds allow (priority range, status name, ...)."""


class StateBusyError(StateError):
    """The state lock could not be taken in time."""


class StateUnavailableError(StateError):
    """The state file cannot be opened: corrupt, foreign, or its directory is not usable."""


class StateOwnedElsewhere(StateError):
    """A daemon took the state over while this process waited for it; ask the daemon instead."""


class BadRequestError(InvalidValueError):
    """The request itself is malformed (not a number, not one of the choices): bad usage, exit status 2."""


class PermissionDeniedError(StateError):
    """The caller may not do this (an ADMIN or HOST token is needed, or the thing is another token's)."""


class UnknownTokenError(NotFoundError):
    """The token presented is not known to the SDA Manager (the runtime's ``moreh::InvalidToken``)."""
