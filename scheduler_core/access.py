"""Which SDA models a token may use, through user group -> membership -> SDA model group.

A token that belongs to no user group is unrestricted: it may use every model. That keeps a fresh
install usable out of the box; as soon as an admin puts a token in a user group, only the models
of the SDA model groups that group reaches (through memberships) remain allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from state.records import ModelGroup, SDAModel, UserGroup


@dataclass(frozen=True)
class ModelChoice:
    """A model a token may use, and the SDA model group it is reached through (None: no group)."""

    model: SDAModel
    group: ModelGroup | None


def token_groups(token: str, user_groups: Iterable[UserGroup]) -> list[UserGroup]:
    """Return the user groups that contain ``token``."""
    return [g for g in user_groups if token in g.tokens]


def allowed_models(
    token: str,
    models: Sequence[SDAModel],
    user_groups: Sequence[UserGroup],
    model_groups: Sequence[ModelGroup],
    memberships: Iterable[tuple[int, int]],
) -> list[ModelChoice]:
    """Return the (model, group) pairs ``token`` may use, in model-group then model order.

    Args:
        token: the token value.
        models: every SDA model.
        user_groups: every user group with its tokens.
        model_groups: every SDA model group with its models.
        memberships: (user group id, SDA model group id) pairs.
    """
    mine = token_groups(token, user_groups)
    if not mine:
        groups_of: dict[int, list[ModelGroup]] = {}
        for group in model_groups:
            for model in group.models:
                groups_of.setdefault(model.id, []).append(group)
        choices: list[ModelChoice] = []
        for model in sorted(models, key=lambda m: m.id):
            owners = groups_of.get(model.id)
            if owners:
                choices.extend(ModelChoice(model, g) for g in owners)
            else:
                choices.append(ModelChoice(model, None))
        return choices
    my_ids = {g.id for g in mine}
    reachable = {mg for ug, mg in memberships if ug in my_ids}
    return [
        ModelChoice(model, group)
        for group in sorted(model_groups, key=lambda g: g.id)
        if group.id in reachable
        for model in group.models
    ]


def sda_quota_left(owned: int, max_sda: int) -> int:
    """Return how many more SDAs a token that owns ``owned`` of at most ``max_sda`` may create (never below 0).

    A token may own up to its max SDA; one that already owns more (its max was lowered around it)
    may create none until it deletes some.
    """
    return max(0, max_sda - owned)


def may_use(choices: Sequence[ModelChoice], model_id: int, model_group_id: int | None) -> ModelChoice | None:
    """Return the choice that permits ``model_id`` (through ``model_group_id`` when given), else None."""
    for choice in choices:
        if choice.model.id != model_id:
            continue
        if model_group_id is None or (choice.group is not None and choice.group.id == model_group_id):
            return choice
    return None
