"""SDA models and SDAs (a token's software-defined accelerators)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scheduler_core.access import ModelChoice, may_use, sda_quota_left
from scheduler_core.scheduling import BackendState, DeviceState, reserve
from state.checks import check_name
from state.errors import ConflictError, InvalidValueError, NotFoundError
from state.records import SDA, DeviceRef, SDAModel

if TYPE_CHECKING:
    from state.session import Session

MAX_MODEL_DEVICES = 4096


class SDAModelRepository:
    """Reads and changes SDA models."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def get(self, model_id: int) -> SDAModel:
        """Return the model or raise NotFoundError."""
        row = self.s.one("SELECT id, name, devices FROM sda_models WHERE id = ?", [model_id])
        if row is None:
            raise NotFoundError(f"SDA model {model_id} not found; list models with 'show sdamodel'.")
        return SDAModel(*row)

    def exists(self, model_id: int) -> bool:
        """Whether an SDA model with this id exists."""
        return self.s.one("SELECT 1 FROM sda_models WHERE id = ?", [model_id]) is not None

    def all(self) -> list[SDAModel]:
        """Return every model ordered by id."""
        return [SDAModel(*r) for r in self.s.all("SELECT id, name, devices FROM sda_models ORDER BY id")]

    def create(self, name: str, devices: int) -> int:
        """Create a model of ``devices`` whole devices and return its id."""
        check_name(name, "SDA model name")
        if not 1 <= devices <= MAX_MODEL_DEVICES:
            raise InvalidValueError(f"Device count {devices} is out of range: use 1 to {MAX_MODEL_DEVICES}.")
        if self.s.one("SELECT id FROM sda_models WHERE name = ?", [name]) is not None:
            raise ConflictError(f"An SDA model named '{name}' already exists; pick another name.")
        row = self.s.one("SELECT nextval('seq_sdamodel')")
        assert row is not None
        model_id = int(row[0])
        self.s.execute("INSERT INTO sda_models VALUES (?, ?, ?)", [model_id, name, devices])
        self.s.events.record("CREATE_SDAMODEL", f"id={model_id} name={name} devices={devices}")
        return model_id

    def describe(self, model_id: int, description: str) -> None:
        """Set the model's description (the REST API's ``desc``; at most 1024 printable characters)."""
        self.get(model_id)
        if len(description) > 1024 or not description.isprintable():
            raise InvalidValueError("The SDA model description must be at most 1024 printable characters.")
        self.s.execute("DELETE FROM sda_model_info WHERE model_id = ?", [model_id])
        self.s.execute("INSERT INTO sda_model_info VALUES (?, ?)", [model_id, description])

    def descriptions(self) -> dict[int, str]:
        """Model id -> description, for the models that have one."""
        return {int(r[0]): str(r[1]) for r in self.s.all("SELECT model_id, description FROM sda_model_info")}

    def delete(self, model_id: int) -> None:
        """Delete a model that no SDA uses; it also leaves every SDA model group."""
        self.get(model_id)
        used = self.s.one("SELECT count(*) FROM sdas WHERE model_id = ?", [model_id])
        if used and used[0]:
            raise ConflictError(
                f"SDA model {model_id} is used by {used[0]} SDA(s); move them to another model with 'update sda'."
            )
        self.s.execute("DELETE FROM model_group_models WHERE model_id = ?", [model_id])
        self.s.execute("DELETE FROM sda_model_info WHERE model_id = ?", [model_id])
        self.s.limits.forget_model(model_id)
        self.s.execute("DELETE FROM sda_models WHERE id = ?", [model_id])
        self.s.events.record("DELETE_SDAMODEL", f"id={model_id}")


class SDARepository:
    """Reads and changes SDAs; enforces max SDA and the token's model access."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def _devices_by_sda(self, token: str | None = None, sda_id: int | None = None) -> dict[int, list[DeviceRef]]:
        sql = """
            SELECT x.sda_id, x.backend_id, b.host, x.device_index FROM (
                SELECT sda_id, backend_id, device_index FROM sda_reservations
                UNION
                SELECT j.sda_id, d.backend_id, d.device_index FROM job_devices d JOIN jobs j ON j.id = d.job_id
            ) x JOIN backends b ON b.id = x.backend_id
            JOIN sdas s ON s.id = x.sda_id
        """
        params: list[object] = []
        if token is not None:
            sql += " WHERE s.token = ?"
            params.append(token)
        elif sda_id is not None:  # one SDA (every job's submit and start reads its SDA): not every SDA's devices
            sql += " WHERE x.sda_id = ?"
            params.append(sda_id)
        out: dict[int, list[DeviceRef]] = {}
        for sda_id, backend_id, host, index in self.s.all(sql + " ORDER BY 1, 2, 4", params):
            out.setdefault(sda_id, []).append(DeviceRef(backend_id, host, index))
        return out

    def _rows(
        self, where: str = "", params: list[object] | None = None, token: str | None = None, sda_id: int | None = None
    ) -> list[SDA]:
        devices = self._devices_by_sda(token, sda_id)
        rows = self.s.all(
            "SELECT id, token, model_id, model_group_id, description, reserved FROM sdas " + where + " ORDER BY id",
            params,
        )
        return [
            SDA(row[0], row[1], row[2], row[3], row[4], row[5], devices=tuple(devices.get(row[0], ()))) for row in rows
        ]

    def all(self) -> list[SDA]:
        """Return every SDA ordered by id."""
        return self._rows()

    def of_token(self, token: str) -> list[SDA]:
        """Return the token's SDAs (the token must exist)."""
        self.s.tokens.get(token)
        return self._rows("WHERE token = ?", [token], token)

    def get(self, sda_id: int) -> SDA:
        """Return one SDA or raise NotFoundError."""
        found = self._rows("WHERE id = ?", [sda_id], sda_id=sda_id)
        if not found:
            raise NotFoundError(f"SDA {sda_id} not found; list SDAs with 'show sda'.")
        return found[0]

    def choose_model(self, token: str, model_id: int, model_group_id: int | None) -> ModelChoice:
        """Return how ``token`` may use the model, or raise an error that says why it may not."""
        self.s.models.get(model_id)
        if model_group_id is not None:
            group = self.s.model_groups.get(model_group_id)
            if model_id not in {m.id for m in group.models}:
                raise ConflictError(
                    f"SDA model {model_id} is not in SDA model group {model_group_id}; "
                    f"add it with 'add sdamodelgroup {model_group_id} {model_id}'."
                )
        choice = may_use(self.s.model_groups.choices_for(token), model_id, model_group_id)
        if choice is None:
            raise ConflictError(
                f"Token '{token}' may not use SDA model {model_id}: none of its user groups reaches it through "
                "a membership; see 'show sdamodel {token}' and 'show relationship'.".replace("{token}", token)
            )
        return choice

    def create(
        self,
        token: str,
        description: str,
        model_id: int,
        model_group_id: int | None = None,
        *,
        reserved: bool = False,
    ) -> int:
        """Create an SDA for ``token`` and return its id; the token's first SDA becomes its current one."""
        owner = self.s.tokens.get(token)
        if description:
            check_name(description, "SDA description")
        choice = self.choose_model(token, model_id, model_group_id)
        row = self.s.one("SELECT count(*) FROM sdas WHERE token = ?", [token])
        held = int(row[0]) if row else 0
        if sda_quota_left(held, owner.max_sda) < 1:
            raise ConflictError(
                f"Token '{token}' already holds {held} SDA(s), its max SDA; raise it with "
                f"'update token sda max {token} {held + 1}' or delete one."
            )
        row = self.s.one("SELECT nextval('seq_sda')")
        assert row is not None
        sda_id = int(row[0])
        group_id = choice.group.id if choice.group is not None else None
        self.s.execute(
            "INSERT INTO sdas VALUES (?, ?, ?, ?, ?, ?, now())",
            [sda_id, token, model_id, group_id, description, reserved],
        )
        if reserved:
            self._reserve_devices(sda_id, model_id)
        if owner.current_sda is None:
            self.s.execute("UPDATE tokens SET current_sda = ? WHERE value = ?", [sda_id, token])
        self.s.events.record(
            "CREATE_RESV_SDA" if reserved else "CREATE_SDA",
            f"id={sda_id} model={model_id} group={group_id if group_id is not None else ''}",
            token,
        )
        return sda_id

    def _reserve_devices(self, sda_id: int, model_id: int) -> None:
        """Hold idle devices for a reserved SDA from now until it is deleted (packed like a job's)."""
        count = self.s.models.get(model_id).devices
        group_id = self.s.jobs.backend_group_of_sda(sda_id)
        devices: dict[int, list[DeviceState]] = {}
        for backend_id, idx, status in self.s.all("SELECT backend_id, idx, status FROM devices ORDER BY 1, 2"):
            devices.setdefault(backend_id, []).append(DeviceState(backend_id, idx, status))
        backends = [
            BackendState(bid, host, gid, status == "ACTIVE", tuple(devices.get(bid, ())))
            for bid, host, gid, status in self.s.all("SELECT id, host, group_id, status FROM backends ORDER BY id")
        ]
        held = {(int(b), int(i)) for b, i in self.s.all("SELECT backend_id, device_index FROM sda_reservations")}
        chosen = reserve(backends, count, group_id, held)
        if chosen is None:
            idle = sum(
                1
                for b in backends
                if b.active and b.group_id == group_id
                for d in b.devices
                if d.status == "IDLE" and (b.id, d.index) not in held
            )
            raise ConflictError(
                f"Cannot reserve {count} device(s) for SDA model {model_id}: backend group {group_id} has only "
                f"{idle} idle unreserved device(s); free some or pick a smaller model."
            )
        self.s.executemany("INSERT INTO sda_reservations VALUES (?, ?, ?)", [[sda_id, b, i] for b, i in chosen])

    def _refuse_if_busy(self, sda_id: int, doing: str) -> None:
        busy = self.s.one("SELECT id, status FROM jobs WHERE sda_id = ? ORDER BY id LIMIT 1", [sda_id])
        if busy is not None:
            raise ConflictError(
                f"SDA {sda_id} cannot be {doing} while job {busy[0]} is {busy[1]} on it; release it first "
                f"with 'release {busy[0]}'."
            )

    def delete(self, token: str, sda_id: int | None = None) -> int:
        """Delete one SDA of the token (or all of them) and return how many were deleted."""
        owned = self.of_token(token)
        if sda_id is not None:
            owned = [sda for sda in owned if sda.id == sda_id]
            if not owned:
                raise NotFoundError(f"SDA {sda_id} does not belong to token '{token}'; see 'get sda {token}'.")
        if not owned:
            raise NotFoundError(f"Token '{token}' has no SDA to delete.")
        for sda in owned:
            self._refuse_if_busy(sda.id, "deleted")
        for sda in owned:
            self.s.execute("DELETE FROM sda_reservations WHERE sda_id = ?", [sda.id])
            self.s.execute("DELETE FROM sdas WHERE id = ?", [sda.id])
            self.s.events.record("DELETE_SDA", f"id={sda.id}", token)
        remaining = self.s.one("SELECT min(id) FROM sdas WHERE token = ?", [token])
        current = self.s.tokens.get(token).current_sda
        if current is None or current in {sda.id for sda in owned}:
            self.s.execute(
                "UPDATE tokens SET current_sda = ? WHERE value = ?",
                [remaining[0] if remaining else None, token],
            )
        return len(owned)

    def update_model(
        self, token: str, model_id: int, model_group_id: int | None = None, sda_id: int | None = None
    ) -> int:
        """Switch an SDA (the token's current one unless ``sda_id``) to another model; return its id."""
        owner = self.s.tokens.get(token)
        if sda_id is None:
            if owner.current_sda is None:
                raise NotFoundError(f"Token '{token}' has no SDA; create one with 'create sda'.")
            sda_id = owner.current_sda
        sda = self.get(sda_id)
        if sda.token != token:
            raise NotFoundError(f"SDA {sda_id} does not belong to token '{token}'; see 'get sda {token}'.")
        if sda.reserved:
            raise ConflictError(f"SDA {sda_id} is reserved; delete it and create a new reserved SDA instead.")
        self._refuse_if_busy(sda_id, "switched to another model")
        choice = self.choose_model(token, model_id, model_group_id)
        group_id = choice.group.id if choice.group is not None else None
        self.s.execute(
            "UPDATE sdas SET model_id = ?, model_group_id = ? WHERE id = ?", [model_id, group_id, sda_id]
        )
        self.s.events.record("UPDATE_SDA", f"id={sda_id} model={model_id}", token)
        return sda_id

    def running(self) -> list[int]:
        """Return the ids of SDAs that have a RUNNING job."""
        return [int(r[0]) for r in self.s.all("SELECT DISTINCT sda_id FROM jobs WHERE status = 'RUNNING' ORDER BY 1")]
