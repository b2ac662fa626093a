"""User: the portal's sign-in records (``/api/user``). ADMIN tokens only: the portal calls these for its users.

Passwords and QnA answers are stored only as salted scrypt hashes (state/users.py); responses never hold them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Request

from moreh_tools.api.auth import CallerDep, require_admin
from moreh_tools.api.errors import NOT_FOUND, ApiError
from moreh_tools.api.params import param
from state.errors import ConflictError, NotFoundError, StateError
from state.users import User

router = APIRouter(tags=["User"])
_SIGNIN_FAILED = "Sign-in failed: wrong id or password."


def _user(user: User) -> dict[str, Any]:
    return {"nId": user.n_id, "sId": user.id, "sName": user.name, "sSalt": user.salt, "sQuestion": user.question}


@contextmanager
def _db_errors() -> Iterator[None]:
    """The User group reports every database-side failure as 601, like the document's MySQL errors."""
    try:
        yield
    except StateError as exc:
        status = 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, ConflictError) else 400
        raise ApiError(NOT_FOUND, str(exc), status) from None


def _affected(rows: int = 1, insert_id: int = 0) -> dict[str, int]:
    return {"affectedRows": rows, "insertId": insert_id, "warningStatus": 0}


@router.get("/api/user", summary="List users (or one with id)")
def list_users(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """Every sign-in user, or only ``id``."""
    require_admin(caller)
    user_id = param(request, "id", str, required=False)
    with _db_errors(), request.app.state.store.reading() as s:
        return [_user(u) for u in s.users.all(user_id)]


@router.post("/api/user", summary="Store a user")
def create_user(request: Request, caller: CallerDep) -> dict[str, int]:
    """Store a user with a password and a QnA question and answer (both hashed)."""
    require_admin(caller)
    user_id = param(request, "id", str)
    name = param(request, "name", str)
    salt = param(request, "salt", str)
    password = param(request, "password", str)
    question = param(request, "question", str)
    answer = param(request, "answer", str)
    with _db_errors(), request.app.state.store.transaction("api: POST /api/user") as s:
        number = s.users.create(user_id, name, salt, password, question, answer)
    return _affected(1, number)


@router.put("/api/user", summary="Reset a user's password")
def reset_password(request: Request, caller: CallerDep) -> dict[str, int]:
    """Set a new password; ``answertoken`` must match the user's QnA answer (as ``GET /api/user/qna`` checks it)."""
    require_admin(caller)
    user_id = param(request, "id", str)
    password = param(request, "password", str)
    answer = param(request, "answertoken", str)
    with _db_errors(), request.app.state.store.transaction("api: PUT /api/user") as s:
        s.users.reset_password(user_id, password, answer)
    return _affected(1)


@router.get("/api/user/signin", summary="Check an id and password")
def signin(request: Request, caller: CallerDep) -> str:
    """``"success"`` when the password is the user's; 601 otherwise (the same for an unknown id)."""
    require_admin(caller)
    user_id = param(request, "id", str)
    password = param(request, "password", str)
    with request.app.state.store.reading() as s:
        matched = s.users.check_password(user_id, password)
    if not matched:
        raise ApiError(NOT_FOUND, _SIGNIN_FAILED, 403)
    return "success"


@router.get("/api/user/qna", summary="Check a QnA answer")
def qna(request: Request, caller: CallerDep) -> str:
    """``"success"`` when ``salt`` and ``answer`` match the user's; 601 otherwise."""
    require_admin(caller)
    user_id = param(request, "id", str)
    salt = param(request, "salt", str)
    answer = param(request, "answer", str)
    with request.app.state.store.reading() as s:
        matched = s.users.check_answer(user_id, answer, salt)
    if not matched:
        raise ApiError(NOT_FOUND, "QnA check failed: wrong id, salt or answer.", 403)
    return "success"
