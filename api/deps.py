"""Dependencies: the runtime, a database session, and the caller's identity.

The caller is authenticated before the request body is read: routes that take a body use
`AuthenticatedRoute`, which runs `authenticate` ahead of FastAPI's body parsing, so a client
without a key cannot make the server read, parse or validate anything. The `current_owner`
dependency then finds the answer on the request; it also declares the bearer scheme that the
OpenAPI document (and Swagger's Authorize button) shows.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from masterplan.runtime import Runtime

ANONYMOUS = "anonymous"
CHALLENGE = {"WWW-Authenticate": "Bearer"}

bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearer",
    description="`Authorization: Bearer <key>` with one of the server's API_KEYS. Each key sees "
    "only the jobs it made.")


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


def bearer_token(request: Request) -> bytes | None:
    """The token of `Authorization: Bearer <token>`, as the bytes the client sent.

    Header values arrive decoded as Latin-1, so encoding back gives the exact bytes for any
    input; comparing bytes never fails, where `compare_digest` on a non-ASCII str raises."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token.encode("latin-1")


def matching(token: bytes, secrets: Iterable[str]) -> str | None:
    """The secret equal to `token`, compared in constant time, or None."""
    found = None
    for secret in secrets:
        if hmac.compare_digest(token, secret.encode()):
            found = secret
    return found


def authenticate(request: Request) -> str:
    """The caller's owner fingerprint, or a 401. Remembered on the request."""
    owner: str | None = getattr(request.state, "owner", None)
    if owner is not None:
        return owner
    if get_runtime(request).settings.auth_disabled:
        owner = ANONYMOUS
    else:
        token = bearer_token(request)
        if token is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                "missing API key: send `Authorization: Bearer <key>`",
                                headers=CHALLENGE)
        key = matching(token, request.app.state.api_keys)
        if key is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers=CHALLENGE)
        owner = owner_of(key)
    request.state.owner = owner
    return owner


def current_owner(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> str:
    return authenticate(request)


OwnerDep = Annotated[str, Depends(current_owner)]


class AuthenticatedRoute(APIRoute):
    """A route whose caller is authenticated before FastAPI reads and parses the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            authenticate(request)
            return await handler(request)

        return authenticated
