"""SQL for the named API tokens (next to ``app.db.repository``; the rules are in ``app.services.tokens``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from app.db.schema import ApiToken

K: Table = ApiToken.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class TokenRecord:
    id: int
    name: str
    role: str
    digest: str
    created_at: datetime


def _record(row: object) -> TokenRecord:
    return TokenRecord(**row._mapping)  # type: ignore[attr-defined]


def token_by_digest(s: Session, digest: str) -> TokenRecord | None:
    row = s.execute(select(K).where(K.c.digest == digest)).first()
    return _record(row) if row is not None else None


def token_by_name(s: Session, name: str) -> TokenRecord | None:
    row = s.execute(select(K).where(K.c.name == name)).first()
    return _record(row) if row is not None else None


def list_tokens(s: Session) -> list[TokenRecord]:
    return [_record(r) for r in s.execute(select(K).order_by(K.c.name))]


def insert_token(s: Session, name: str, role: str, digest: str, now: datetime) -> None:
    s.execute(insert(K).values(name=name, role=role, digest=digest, created_at=now))


def delete_token(s: Session, name: str) -> bool:
    return bool(s.execute(delete(K).where(K.c.name == name)).rowcount)  # type: ignore[attr-defined]
