"""Password hashing: argon2id, with parameters upgraded on the next login."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from plasmaart.errors import DomainError

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters

MIN_PASSWORD_LENGTH = 10


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


class WrongPassword(DomainError):
    """The current password, asked again before a sensitive change (a new
    password or address, deleting the account), is wrong."""

    code = "wrong_password"
    status = 403
    title = "Wrong password"
