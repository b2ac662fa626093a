"""A token's devices (its SDAs) and their models, as ``moreh-smi device ...`` and ``moreh-switch-model`` change them.

Each change is one transaction; the state's repositories enforce the rules too, and the checks here
run first, inside the same transaction, so the user reads a message about *their* devices rather
than an admin command. Model numbers follow the models' size (then id), the reference's order, over
the models the token may use: an admin regrouping models does not renumber them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from moreh_tools.services.records import (
    DEVICE_NAME,
    Added,
    ModelOption,
    OwnedDevices,
    SwitchChoices,
    Switched,
)
from moreh_tools.services.status import collect_status, unknown_token
from state.errors import BadRequestError, ConflictError, NotFoundError, UnknownTokenError

if TYPE_CHECKING:
    from moreh_tools.services.context import ServiceContext
    from state.records import SDA, Job, Token
    from state.session import Session

#: The prefix that names a model by its id rather than by its number in the list (``--add id:52``).
ID_PREFIX = "id:"


def _token(ctx: ServiceContext) -> str:
    if ctx.caller.token is None:
        raise UnknownTokenError("SDA token is not given.")
    return ctx.caller.token


def check_token(s: Session, token: str) -> Token:
    """The token's record; refuse one the state does not know (the runtime's ``moreh::InvalidToken``)."""
    try:
        return s.tokens.get(token)
    except NotFoundError:
        raise unknown_token(token) from None


def model_options(s: Session, token: str) -> list[ModelOption]:
    """The models ``token`` may use, numbered from 1 by size then id (a model offered by two groups: twice)."""
    choices = sorted(
        s.model_groups.choices_for(token),
        key=lambda c: (c.model.devices, c.model.id, c.group.id if c.group else -1),
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


def resolve_model(options: Sequence[ModelOption], text: str) -> ModelOption:
    """The option ``text`` names: its list number, ``id:<model id>``, its name, ``name@group`` or its list label."""
    wanted = text.strip()
    if wanted.isascii() and wanted.isdigit():
        for option in options:
            if option.number == int(wanted):
                return option
        raise NotFoundError(
            f"There is no model number {wanted}: use 1 to {len(options)} as 'moreh-smi device --list' numbers them."
            if options
            else "This token may use no SDA model; ask your administrator to give it access to one."
        )
    if wanted.lower().startswith(ID_PREFIX):
        digits = wanted[len(ID_PREFIX) :]
        found = [o for o in options if digits.isascii() and digits.isdigit() and o.model_id == int(digits)]
        return _one_of(found, wanted)
    for fold in (False, True):
        found = [o for o in options if _names(o, fold) & {wanted.casefold() if fold else wanted}]
        if found:
            return _one_of(found, wanted)
    raise NotFoundError(
        f"'{wanted}' is not a model this token may use; see the list with 'moreh-smi device --list' "
        f"and give its number, its name or {ID_PREFIX}<model id>."
    )


def _one_of(found: list[ModelOption], wanted: str) -> ModelOption:
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFoundError(f"'{wanted}' is not a model this token may use; see 'moreh-smi device --list'.")
    groups = ", ".join(f"{o.name}@{o.group_name}" for o in found if o.group_name)
    raise ConflictError(f"Model '{wanted}' is offered through more than one SDA model group; name one of {groups}.")


def _names(option: ModelOption, fold: bool) -> set[str]:
    names = {option.name, option.label, option.text}
    if option.group_name:
        names.add(f"{option.name}@{option.group_name}")
    return {n.casefold() for n in names} if fold else names


def owned_device(s: Session, token: str, text: str) -> SDA:
    """The token's device numbered ``text``; BadRequestError when ``text`` is not a number at all."""
    owned = s.sdas.of_token(token)
    ids = ", ".join(str(sda.id) for sda in owned) or "none"
    if not (text.isascii() and text.isdigit()):
        raise BadRequestError(f"'{text}' is not a device id: give one of your device ids ({ids}).")
    for sda in owned:
        if sda.id == int(text):
            return sda
    raise NotFoundError(f"Device {text} is not one of your devices; your devices are: {ids}.")


def busy_detail(job: Job) -> str:
    """``job 12 (RUNNING) runs on device 3``."""
    verb = "waits for" if job.status == "QUEUED" else "runs on"
    return f"job {job.id} ({job.status}) {verb} device {job.sda_id}"


def room_left(s: Session, token: str) -> int:
    """How many more devices the token may add (its max SDA, set by the admin, minus what it has)."""
    return s.tokens.get(token).max_sda - len(s.sdas.of_token(token))


def check_room(s: Session, token: str) -> None:
    """Refuse when the token already has as many devices as it may."""
    if room_left(s, token) <= 0:
        owner = s.tokens.get(token)
        raise ConflictError(
            f"You already have {len(s.sdas.of_token(token))} device(s), the most this token may have "
            f"({owner.max_sda}); remove one with 'moreh-smi device --rm' or ask your administrator to raise "
            "the limit."
        )


def _still_offered(s: Session, token: str, option: ModelOption) -> ModelOption:
    for current in model_options(s, token):
        if (current.model_id, current.group_id) == (option.model_id, option.group_id):
            return current
    raise ConflictError(f"Model '{option.text}' is no longer offered to this token; list the models again.")


def _owned(s: Session, token: str) -> OwnedDevices:
    status = collect_status(s, token)
    return OwnedDevices(tuple(d.id for d in status.devices), status.devices)


# -- the operations -------------------------------------------------------------------------------------------


def models(ctx: ServiceContext, *, need_room: bool = False) -> list[ModelOption]:
    """The models the caller's token may add a device of; with ``need_room``, refused at its max SDA."""
    token = _token(ctx)
    with ctx.read() as s:
        check_token(s, token)
        options = model_options(s, token)
        if not options:
            raise ConflictError("This token may use no SDA model; ask your administrator to give it access to one.")
        if need_room:
            check_room(s, token)
    return options


def add(ctx: ServiceContext, *, model: str | None = None, option: ModelOption | None = None) -> Added:
    """Add a device of ``model`` (the text naming one) or of a picked ``option``; the devices after it."""
    token = _token(ctx)
    if (model is None) == (option is None):
        raise BadRequestError("Name exactly one model: its number, its name, or a picked option.")
    with ctx.write(f"moreh-smi device --add {model if model is not None else option.text if option else ''}") as s:
        check_token(s, token)
        check_room(s, token)
        chosen = resolve_model(model_options(s, token), model) if model is not None else None
        if chosen is None:
            assert option is not None
            chosen = _still_offered(s, token, option)
        s.sdas.create(token, "", chosen.model_id, chosen.group_id)
        return Added(_owned(s, token).devices, room_left(s, token), tuple(model_options(s, token)))


def owned(ctx: ServiceContext) -> OwnedDevices:
    """The token's device ids and its devices as the short table shows them."""
    token = _token(ctx)
    with ctx.read() as s:
        check_token(s, token)
        return _owned(s, token)


def remove(ctx: ServiceContext, *, device: str) -> OwnedDevices:
    """Remove one of the token's devices that no job uses; the devices after it."""
    token = _token(ctx)
    with ctx.write(f"moreh-smi device --rm {device}") as s:
        check_token(s, token)
        sda = owned_device(s, token, device)
        job = s.jobs.first_on_sda(sda.id)
        if job is not None:
            raise ConflictError(
                f"Device {sda.id} cannot be removed while it is in use: {busy_detail(job)}; "
                f"stop it first with 'moreh-smi --reset -i {sda.id}'."
            )
        s.sdas.delete(token, sda.id)
        return _owned(s, token)


def switch_device(ctx: ServiceContext, *, device: str) -> OwnedDevices:
    """Make one of the token's devices its current one; the devices after it."""
    token = _token(ctx)
    with ctx.write(f"moreh-smi device --switch {device}") as s:
        check_token(s, token)
        sda = owned_device(s, token, device)
        s.tokens.update_current_sda(token, sda.id)
        return _owned(s, token)


def current_device(s: Session, token: str) -> SDA:
    """The token's current device, or ConflictError when it has none."""
    check_token(s, token)
    current = s.tokens.get(token).current_sda
    if current is None:
        raise ConflictError(f"This token has no {DEVICE_NAME} yet; add one with 'moreh-smi device --add'.")
    return s.sdas.get(current)


def switch_choices(ctx: ServiceContext) -> SwitchChoices:
    """The current device, the text of its model, and the models the token may switch it to."""
    token = _token(ctx)
    with ctx.read() as s:
        sda = current_device(s, token)
        options = tuple(model_options(s, token))
        if not options:
            raise ConflictError("This token may use no SDA model; ask your administrator to give it access to one.")
        current = next((o for o in options if o.is_model_of(sda)), None)
        if current is not None:
            text = current.text
        else:
            # The admin may have taken the current model out of the token's reach: still say what it is.
            name = s.models.get(sda.model_id).name
            group = s.model_groups.get(sda.model_group_id).name if sda.model_group_id is not None else None
            text = f"{name} at {group}" if group else name
        job = s.jobs.first_on_sda(sda.id)
    busy = f"job {job.id} ({job.status}) uses it" if job is not None else None
    if sda.reserved:
        busy = "it is a reserved device"
    return SwitchChoices(text, current, options, sda.id, busy)


def switch_model(ctx: ServiceContext, *, model: str | None = None, option: ModelOption | None = None) -> Switched:
    """Switch the current device to ``model`` (text) or a picked ``option``; refused while a job uses the device."""
    token = _token(ctx)
    if (model is None) == (option is None):
        raise BadRequestError("Name exactly one model: its number, its name, or a picked option.")
    shown = model if model is not None else option.text if option else ""
    with ctx.write(f"moreh-switch-model --model {shown}") as s:
        sda = current_device(s, token)
        chosen = resolve_model(model_options(s, token), model) if model is not None else None
        if chosen is None:
            assert option is not None
            chosen = option
        if chosen.is_model_of(sda):
            return Switched(chosen, False)
        job = s.jobs.first_on_sda(sda.id)
        if job is not None:
            raise ConflictError(
                f"The model cannot be switched while the {DEVICE_NAME} is in use: {busy_detail(job)}; "
                f"wait for it to end or stop it with 'moreh-smi --reset'."
            )
        if sda.reserved:
            raise ConflictError(
                f"Device {sda.id} is a reserved {DEVICE_NAME}; its model cannot be switched (ask your administrator)."
            )
        chosen = _still_offered(s, token, chosen)
        s.sdas.update_model(token, chosen.model_id, chosen.group_id, sda.id)
        return Switched(chosen, True)
