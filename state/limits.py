"""Time limits: a default and a maximum per token and per SDA model (seconds; None: not set).

Only storage lives here; which limit a job gets is :func:`scheduler_core.timelimits.effective_limit`, called
by the job service when the job is queued, and what may be stored is checked by :mod:`moreh_tools.services.limits`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from state.records import TimeLimits

if TYPE_CHECKING:
    from state.session import Session


def _text(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


class TimeLimitRepository:
    """Reads and changes the time limits of tokens and SDA models; every change records an event."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def of_token(self, token: str) -> TimeLimits:
        """The token's limits (both None when none is set)."""
        row = self.s.one("SELECT default_s, max_s FROM token_time_limits WHERE token = ?", [token])
        return TimeLimits(*row) if row else TimeLimits()

    def of_model(self, model_id: int) -> TimeLimits:
        """The SDA model's limits (both None when none is set)."""
        row = self.s.one("SELECT default_s, max_s FROM model_time_limits WHERE model_id = ?", [model_id])
        return TimeLimits(*row) if row else TimeLimits()

    def tokens(self) -> dict[str, TimeLimits]:
        """Every token that has a limit set, with its limits."""
        return {str(t): TimeLimits(d, m) for t, d, m in self.s.all("SELECT token, default_s, max_s FROM token_time_limits")}

    def models(self) -> dict[int, TimeLimits]:
        """Every SDA model that has a limit set, with its limits."""
        rows = self.s.all("SELECT model_id, default_s, max_s FROM model_time_limits")
        return {int(m): TimeLimits(d, x) for m, d, x in rows}

    def set_token(self, token: str, limits: TimeLimits) -> None:
        """Set (or, with neither limit, clear) the token's limits; the token must exist."""
        self.s.tokens.get(token)
        self.s.execute("DELETE FROM token_time_limits WHERE token = ?", [token])
        if limits.is_set:
            self.s.execute("INSERT INTO token_time_limits VALUES (?, ?, ?)", [token, limits.default, limits.maximum])
        detail = f"default={_text(limits.default)} max={_text(limits.maximum)}"
        self.s.events.record("UPDATE_TOKEN_TIMELIMIT", detail, token)

    def set_model(self, model_id: int, limits: TimeLimits) -> None:
        """Set (or, with neither limit, clear) the SDA model's limits; the model must exist."""
        self.s.models.get(model_id)
        self.s.execute("DELETE FROM model_time_limits WHERE model_id = ?", [model_id])
        if limits.is_set:
            self.s.execute(
                "INSERT INTO model_time_limits VALUES (?, ?, ?)", [model_id, limits.default, limits.maximum]
            )
        detail = f"id={model_id} default={_text(limits.default)} max={_text(limits.maximum)}"
        self.s.events.record("UPDATE_SDAMODEL_TIMELIMIT", detail)

    def forget_token(self, token: str) -> None:
        """A token is being deleted: drop its limits."""
        self.s.execute("DELETE FROM token_time_limits WHERE token = ?", [token])

    def forget_model(self, model_id: int) -> None:
        """An SDA model is being deleted: drop its limits."""
        self.s.execute("DELETE FROM model_time_limits WHERE model_id = ?", [model_id])
