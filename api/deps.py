"""Dependencies: the runtime, a database session, and the caller's identity."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from masterplan.runtime import Runtime

ANONYMOUS = "anonymous"


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    with rt.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def owner_of(key: str) -> str:
    """Jobs belong to a fingerprint of the key, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def current_owner(request: Request, rt: RuntimeDep) -> str:
    if rt.settings.auth_disabled:
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not any(hmac.compare_digest(token, k) for k in request.app.state.api_keys):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return owner_of(token)


OwnerDep = Annotated[str, Depends(current_owner)]
