"""Time limits as use cases: what an admin may set on a token or an SDA model, and the limit a job runs under.

The rules, once for the console, the API and ``moreh-run``:

* A limit is written in Slurm's ``--time`` forms or with a unit (:func:`scheduler_core.timelimits.parse_time_limit`);
  ``null`` (or ``none``) clears it. Anything else is bad usage (:class:`~state.errors.BadRequestError`,
  one line naming the accepted forms), and nothing changes.
* ``update ... timelimit X DEFAULT [MAX]`` sets the default and, when given, the maximum (left out: the
  maximum stays as it was). A default above the maximum is refused (nothing changes).
* A job's limit is decided once, when it is queued (:func:`job_limit`, with
  :func:`scheduler_core.timelimits.effective_limit`): its request, else the token's default, else the
  model's, else the smaller maximum; a request above a maximum is refused before anything is queued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scheduler_core.timelimits import ACCEPTED_FORMS, effective_limit, format_duration, parse_time_limit
from state.errors import BadRequestError, InvalidValueError
from state.records import TimeLimits

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext
    from state.session import Session

NULL_WORDS = ("null", "none")


def parse_limit(text: str, what: str = "time limit") -> float | None:
    """Read one limit argument: seconds, or None for ``null``/``none``; BadRequestError naming the forms otherwise."""
    if text.strip().lower() in NULL_WORDS:
        return None
    try:
        return parse_time_limit(text)
    except ValueError:
        raise BadRequestError(
            f"The {what} '{text[:40]}' is not a time limit: use {ACCEPTED_FORMS} (more than 0, at most 365 days), "
            "or null to clear it."
        ) from None


def limit_text(value: float | None) -> str:
    """A limit as the tables show it (``01:30:00``, ``2-00:00:00``; "" when not set)."""
    return "" if value is None else format_duration(value)


def _merged(old: TimeLimits, default_text: str | None, max_text: str | None) -> TimeLimits:
    """``old`` with the given texts applied (None: that limit unchanged); refused when the default is above the max."""
    default = old.default if default_text is None else parse_limit(default_text, "default time limit")
    maximum = old.maximum if max_text is None else parse_limit(max_text, "maximum time limit")
    if default is not None and maximum is not None and default > maximum:
        raise InvalidValueError(
            f"The default time limit {format_duration(default)} is above the maximum {format_duration(maximum)}; "
            "give a default at or below the maximum."
        )
    return TimeLimits(default, maximum)


def apply_token_limits(s: Session, token: str, default: str | None, maximum: str | None) -> TimeLimits:
    """Inside the caller's transaction: set what is given of a token's default and maximum (``null`` clears)."""
    _merged(TimeLimits(), default, maximum)  # bad usage before anything is read
    limits = _merged(s.limits.of_token(token) if s.tokens.exists(token) else TimeLimits(), default, maximum)
    s.limits.set_token(token, limits)
    return limits


def apply_model_limits(s: Session, model_id: int, default: str | None, maximum: str | None) -> TimeLimits:
    """Inside the caller's transaction: set what is given of an SDA model's default and maximum (``null`` clears)."""
    _merged(TimeLimits(), default, maximum)
    limits = _merged(s.limits.of_model(model_id) if s.models.exists(model_id) else TimeLimits(), default, maximum)
    s.limits.set_model(model_id, limits)
    return limits


def set_token_limits(ctx: ServiceContext, *, token: str, default: str, maximum: str | None = None) -> TimeLimits:
    """Set a token's default time limit and, when given, its maximum (``null`` clears); the limits now in force."""
    _merged(TimeLimits(), default, maximum)  # parse first: bad usage must not wait for (or hold) the state lock
    with ctx.write(f"update token timelimit {token} {default} {maximum or ''}".strip()) as s:
        return apply_token_limits(s, token, default, maximum)


def set_model_limits(ctx: ServiceContext, *, model_id: int, default: str, maximum: str | None = None) -> TimeLimits:
    """Set an SDA model's default time limit and, when given, its maximum (``null`` clears); the limits now in force."""
    _merged(TimeLimits(), default, maximum)
    with ctx.write(f"update sdamodel timelimit {model_id} {default} {maximum or ''}".strip()) as s:
        return apply_model_limits(s, model_id, default, maximum)


def job_limit(s: Session, token: str, model_id: int, requested: float | None) -> float | None:
    """The limit a new job of ``token`` on an SDA of ``model_id`` runs under (None: unlimited).

    Raises:
        InvalidValueError: the request is above the token's or the model's maximum (one line saying which).
    """
    mine = s.limits.of_token(token)
    model = s.limits.of_model(model_id)
    limit, error = effective_limit(requested, mine.default, mine.maximum, model.default, model.maximum)
    if error is not None:
        raise InvalidValueError(f"Job refused: {error}.")
    return limit
