"""A token's devices and models as the user tools change them: each change is one transaction.

The state's repositories enforce the rules too; the checks here run first, inside the same
transaction, so the user reads a message about *their* devices rather than an admin command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moreh_tools.smi.common import DEVICE_NAME, UserError, check_token

if TYPE_CHECKING:
    from state.records import SDA, Job
    from state.session import Session


@dataclass(frozen=True)
class ModelOption:
    """One line of a numbered model list: a model the token may use, and the group it comes through."""

    number: int
    model_id: int
    name: str
    devices: int
    group_id: int | None
    group_name: str | None

    @property
    def label(self) -> str:
        """``Large.256GB``, or ``small mg1`` when the model comes through an SDA model group (seed FAQ)."""
        return f"{self.name} {self.group_name}" if self.group_name else self.name

    @property
    def text(self) -> str:
        """``small at mg1`` (the ``Current …:`` line's form), or just the name."""
        return f"{self.name} at {self.group_name}" if self.group_name else self.name

    def is_model_of(self, sda: SDA) -> bool:
        """Whether this is the SDA's model, reached through the SDA's group."""
        return self.model_id == sda.model_id and self.group_id == sda.model_group_id


def model_options(s: Session, token: str) -> list[ModelOption]:
    """The models ``token`` may use, numbered from 1: by model group, then by size as the real list is."""
    choices = sorted(
        s.model_groups.choices_for(token),
        key=lambda c: (c.group is not None, c.group.id if c.group else 0, c.model.devices, c.model.id),
    )
    return [
        ModelOption(
            number,
            c.model.id,
            c.model.name,
            c.model.devices,
            c.group.id if c.group else None,
            c.group.name if c.group else None,
        )
        for number, c in enumerate(choices, start=1)
    ]


def list_lines(options: Sequence[ModelOption], current: SDA | None = None, marker: bool = False) -> list[str]:
    """``1. Small.64GB`` lines; with ``marker`` the current model gets ``  *`` (`` *`` in the group form)."""
    lines = []
    for option in options:
        line = f"{option.number}. {option.label}"
        if marker and current is not None and option.is_model_of(current):
            line += " *" if option.group_name else "  *"
        lines.append(line)
    return lines


def resolve_model(options: Sequence[ModelOption], text: str) -> ModelOption:
    """The option named by ``text``: its list number, its name, ``name@group`` or its list label."""
    wanted = text.strip()
    if wanted.isascii() and wanted.isdigit():
        for option in options:
            if option.number == int(wanted):
                return option
        raise UserError(
            f"There is no model number {wanted}: use 1 to {len(options)} as 'moreh-smi device --list' numbers them."
            if options
            else "This token may use no SDA model; ask your administrator to give it access to one."
        )
    for fold in (False, True):
        found = [o for o in options if _names(o, fold) & {wanted.casefold() if fold else wanted}]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            groups = ", ".join(f"{o.name}@{o.group_name}" for o in found if o.group_name)
            raise UserError(f"Model '{wanted}' is offered through more than one SDA model group; name one of {groups}.")
    raise UserError(
        f"'{wanted}' is not a model this token may use; see the list with 'moreh-smi device --list' "
        "and give its number or name."
    )


def _names(option: ModelOption, fold: bool) -> set[str]:
    names = {option.name, option.label, option.text}
    if option.group_name:
        names.add(f"{option.name}@{option.group_name}")
    return {n.casefold() for n in names} if fold else names


def owned_device(s: Session, token: str, text: str) -> SDA:
    """The token's device numbered ``text``, or a UserError naming the token's devices."""
    owned = s.sdas.of_token(token)
    ids = ", ".join(str(sda.id) for sda in owned) or "none"
    if not (text.isascii() and text.isdigit()):
        raise UserError(f"'{text}' is not a device id: give one of your device ids ({ids}).", 2)
    for sda in owned:
        if sda.id == int(text):
            return sda
    raise UserError(f"Device {text} is not one of your devices; your devices are: {ids}.")


def job_on(s: Session, sda_id: int) -> Job | None:
    """The first job that uses (or waits for) the device, if any."""
    row = s.one("SELECT id FROM jobs WHERE sda_id = ? ORDER BY id LIMIT 1", [sda_id])
    return s.jobs.find(int(row[0])) if row else None


def _busy_detail(job: Job) -> str:
    verb = "waits for" if job.status == "QUEUED" else "runs on"
    return f"job {job.id} ({job.status}) {verb} device {job.sda_id}"


def room_left(s: Session, token: str) -> int:
    """How many more devices the token may add (its max SDA, set by the admin, minus what it has)."""
    return s.tokens.get(token).max_sda - len(s.sdas.of_token(token))


def check_room(s: Session, token: str) -> None:
    """Refuse when the token already has as many devices as it may."""
    if room_left(s, token) <= 0:
        owner = s.tokens.get(token)
        raise UserError(
            f"You already have {len(s.sdas.of_token(token))} device(s), the most this token may have "
            f"({owner.max_sda}); remove one with 'moreh-smi device --rm' or ask your administrator to raise "
            "the limit."
        )


def _still_offered(s: Session, token: str, option: ModelOption) -> None:
    if not any((o.model_id, o.group_id) == (option.model_id, option.group_id) for o in model_options(s, token)):
        raise UserError(f"Model '{option.text}' is no longer offered to this token; list the models again.")


def add_device(s: Session, token: str, model: ModelOption | str) -> int:
    """Create a device of ``model`` (an option, or the text naming one) for the token; return its id."""
    check_token(s, token)
    check_room(s, token)
    if isinstance(model, str):
        option = resolve_model(model_options(s, token), model)
    else:
        option = model
        _still_offered(s, token, option)
    return s.sdas.create(token, "", option.model_id, option.group_id)


def remove_device(s: Session, token: str, device_text: str) -> int:
    """Remove one of the token's devices that no job uses; return its id."""
    check_token(s, token)
    sda = owned_device(s, token, device_text)
    job = job_on(s, sda.id)
    if job is not None:
        raise UserError(
            f"Device {sda.id} cannot be removed while it is in use: {_busy_detail(job)}; "
            f"stop it first with 'moreh-smi --reset -i {sda.id}'."
        )
    s.sdas.delete(token, sda.id)
    return sda.id


def switch_device(s: Session, token: str, device_text: str) -> int:
    """Make one of the token's devices its current one; return its id."""
    check_token(s, token)
    sda = owned_device(s, token, device_text)
    s.tokens.update_current_sda(token, sda.id)
    return sda.id


def current_device(s: Session, token: str) -> SDA:
    """The token's current device, or a UserError when it has none."""
    check_token(s, token)
    current = s.tokens.get(token).current_sda
    if current is None:
        raise UserError(f"This token has no {DEVICE_NAME} yet; add one with 'moreh-smi device --add'.")
    return s.sdas.get(current)


def switch_model(s: Session, token: str, option: ModelOption) -> bool:
    """Switch the current device to ``option``'s model; False when it already is that model.

    Refused while a job uses (or waits for) the device: its device count would change under it.
    """
    sda = current_device(s, token)
    if option.is_model_of(sda):
        return False
    job = job_on(s, sda.id)
    if job is not None:
        raise UserError(
            f"The model cannot be switched while the {DEVICE_NAME} is in use: {_busy_detail(job)}; "
            f"wait for it to end or stop it with 'moreh-smi --reset'."
        )
    if sda.reserved:
        raise UserError(
            f"Device {sda.id} is a reserved {DEVICE_NAME}; its model cannot be switched (ask your administrator)."
        )
    _still_offered(s, token, option)
    s.sdas.update_model(token, option.model_id, option.group_id, sda.id)
    return True
