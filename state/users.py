"""Portal sign-in users of the REST API (``/api/user``): passwords and QnA answers kept only as scrypt hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from state.checks import check_name
from state.errors import ConflictError, InvalidValueError, NotFoundError

if TYPE_CHECKING:
    from state.session import Session

# scrypt at N=2**14, r=8 (16 MiB, tens of ms per check): slow for a guesser, fine for a sign-in.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_SECRET = 1024


@dataclass(frozen=True)
class User:
    """A sign-in record as ``GET /api/user`` shows it (never its hashes)."""

    n_id: int
    id: str
    name: str
    salt: str
    question: str


def hash_secret(secret: str) -> str:
    """``scrypt$N$r$p$salt$hash`` of ``secret`` with a fresh random salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches the ``hash_secret`` form ``stored`` (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            secret.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), maxmem=64 << 20
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _check_secret(value: str, what: str) -> str:
    if not value:
        raise InvalidValueError(f"The {what} must not be empty.")
    if len(value) > MAX_SECRET:
        raise InvalidValueError(f"The {what} is {len(value)} characters long; use at most {MAX_SECRET}.")
    return value


class UserRepository:
    """Stores and checks sign-in users; every change records an event (without any secret)."""

    def __init__(self, session: Session) -> None:
        """Bind to a session."""
        self.s = session

    def all(self, user_id: str | None = None) -> list[User]:
        """Every user in creation order (or just ``user_id``; NotFoundError if it does not exist)."""
        where, params = ("WHERE id = ?", [user_id]) if user_id is not None else ("", [])
        rows = self.s.all(f"SELECT n_id, id, name, salt, question FROM users {where} ORDER BY n_id", params)
        if user_id is not None and not rows:
            raise NotFoundError(f"User '{user_id}' not found.")
        return [User(*row) for row in rows]

    def create(self, user_id: str, name: str, salt: str, password: str, question: str, answer: str) -> int:
        """Store a new user; return its number (nId)."""
        check_name(user_id, "user id")
        check_name(name, "user name")
        check_name(question, "QnA question")
        if len(salt) > MAX_SECRET:
            raise InvalidValueError(f"The salt is {len(salt)} characters long; use at most {MAX_SECRET}.")
        _check_secret(password, "password")
        _check_secret(answer, "QnA answer")
        if self.s.one("SELECT 1 FROM users WHERE id = ?", [user_id]) is not None:
            raise ConflictError(f"User '{user_id}' already exists; pick another id.")
        row = self.s.one("SELECT nextval('seq_user')")
        assert row is not None
        number = int(row[0])
        self.s.execute(
            "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, now(), now())",
            [user_id, number, name, salt, hash_secret(password), question, hash_secret(answer)],
        )
        self.s.events.record("CREATE_USER", f"id={user_id} nId={number}")
        return number

    def _hashes(self, user_id: str) -> tuple[str, str, str] | None:
        row = self.s.one("SELECT password_hash, answer_hash, salt FROM users WHERE id = ?", [user_id])
        return (str(row[0]), str(row[1]), str(row[2])) if row else None

    def check_password(self, user_id: str, password: str) -> bool:
        """Whether ``password`` is the user's (False for an unknown user, after the same work)."""
        hashes = self._hashes(user_id)
        if hashes is None:
            verify_secret(password, hash_secret("timing"))  # an unknown id takes as long as a wrong password
            return False
        return verify_secret(password, hashes[0])

    def check_answer(self, user_id: str, answer: str, salt: str | None = None) -> bool:
        """Whether ``answer`` (and ``salt``, when given) match the user's QnA record."""
        hashes = self._hashes(user_id)
        if hashes is None:
            verify_secret(answer, hash_secret("timing"))
            return False
        if salt is not None and not hmac.compare_digest(salt.encode(), hashes[2].encode()):
            return False
        return verify_secret(answer, hashes[1])

    def reset_password(self, user_id: str, password: str, answer: str) -> None:
        """Set a new password after checking the QnA answer; NotFoundError for a wrong id or answer."""
        _check_secret(password, "password")
        if not self.check_answer(user_id, answer):
            raise NotFoundError(f"User '{user_id}' not found or the QnA answer does not match.")
        self.s.execute(
            "UPDATE users SET password_hash = ?, updated_at = now() WHERE id = ?", [hash_secret(password), user_id]
        )
        self.s.events.record("UPDATE_USER_PASSWORD", f"id={user_id}")
