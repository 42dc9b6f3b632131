"""Named API tokens and their roles: the rules (who may do what, how a secret is checked); the SQL is in
``app.db.tokens``, the HTTP side in ``app.api.auth``.

* A token has a name (the actor in the run history), a role and a secret. Only ``sha256(secret)`` is stored, so
  the database never holds a usable secret; the secret is printed once by ``tideflow token add``.
* Roles are ordered: ``viewer`` (read) < ``operator`` (start, cancel, retry, signal, resume) < ``admin``
  (register workflows, and whatever administers the deployment).
* The tokens of ``TIDEFLOW_API_TOKEN`` keep working, as ``admin``: each comma-separated entry is ``SECRET``
  (named ``env``) or ``NAME:SECRET``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.clock import utcnow
from app.config import Settings
from app.db import tokens as db
from app.errors import InvalidState, NotFound, TideflowError

#: a token's name: what the run history shows as the actor
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@\-]{0,99}$")
ENV_TOKEN_NAME = "env"
SECRET_PREFIX = "tf_"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


class BadToken(TideflowError):
    """A token name or role that cannot be stored (nothing was stored)."""


@dataclass(frozen=True)
class Identity:
    """Who a request is: the token's name and role, and the digest of its secret (which a UI session carries,
    so that removing the token ends the session)."""

    name: str
    role: Role
    digest: str


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def env_identities(settings: Settings) -> tuple[Identity, ...]:
    """The tokens of ``TIDEFLOW_API_TOKEN``: ``SECRET`` (named ``env``) or ``NAME:SECRET``, all admin."""
    out = []
    for entry in settings.api_tokens:
        name, sep, secret = entry.partition(":")
        if not sep or not TOKEN_NAME_RE.match(name) or not secret:
            name, secret = ENV_TOKEN_NAME, entry
        out.append(Identity(name, Role.ADMIN, digest(secret)))
    return tuple(out)


def _env_match(settings: Settings, token_digest: str) -> Identity | None:
    # compare with every env token, without stopping early, each in constant time
    found = None
    for ident in env_identities(settings):
        if hmac.compare_digest(ident.digest, token_digest):
            found = ident
    return found


#: opens a read-only session (``Database.read``)
Reader = Callable[[], AbstractContextManager[Session]]


def identify_digest(settings: Settings, s_factory: Reader, token_digest: str) -> Identity | None:
    """The identity whose secret has this digest: an env token (no database read), else a stored token
    (``s_factory()``: a context manager giving a read session), else None."""
    ident = _env_match(settings, token_digest)
    if ident is not None:
        return ident
    with s_factory() as s:
        row = db.token_by_digest(s, token_digest)
    return Identity(row.name, Role(row.role), row.digest) if row is not None else None


def identify(settings: Settings, s_factory: Reader, secret: str | None) -> Identity | None:
    """The identity of a presented secret, or None."""
    if not secret or len(secret) > 1000:
        return None
    return identify_digest(settings, s_factory, digest(secret))


def add_token(s: Session, name: str, role: str) -> str:
    """Store a new token; returns its secret (the only time it exists outside the caller)."""
    if not TOKEN_NAME_RE.match(name):
        raise BadToken(f"invalid token name {name!r}: letters, digits and _ . @ - (at most 100)")
    try:
        role = Role(role)
    except ValueError:
        raise BadToken(f"invalid role {role!r}: one of {', '.join(Role)}") from None
    if db.token_by_name(s, name) is not None:
        raise InvalidState(f"token {name!r} already exists (remove it first to replace it)")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    try:
        with s.begin_nested():
            db.insert_token(s, name, role.value, digest(secret), utcnow())
    except IntegrityError:  # a concurrent add of the same name
        raise InvalidState(f"token {name!r} already exists (remove it first to replace it)") from None
    return secret


def remove_token(s: Session, name: str) -> None:
    if not db.delete_token(s, name):
        raise NotFound(f"no token named {name!r}")
