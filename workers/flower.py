"""`python -m workers.flower`: Flower on the project's broker, behind basic auth.

FLOWER_BASIC_AUTH (`user:password`, several separated by commas) is required unless
AUTH_DISABLED=true. The cookie secret is stable across restarts and replicas: FLOWER_COOKIE_SECRET,
or one derived from the basic-auth secret. The port is FLOWER_PORT, or 5555. Further arguments go
to Flower as they are: `python -m workers.flower --address=127.0.0.1`.

Flower runs inside this process, so the secrets never appear on a command line (`ps`), and
nothing here prints them.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
from collections.abc import Mapping, Sequence

from pydantic_settings import BaseSettings, SettingsConfigDict

from masterplan.errors import ConfigError

DEFAULT_PORT = 5555
# Refused as a password: the placeholder that .env.example ships with.
PLACEHOLDER = "change-me"
_COOKIE_LABEL = b"masterplan flower cookie secret v1"


def basic_auth_users(value: str) -> list[str]:
    """The user names in a FLOWER_BASIC_AUTH value; ConfigError (never echoing it) if malformed."""
    users = []
    for entry in value.split(","):
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            raise ConfigError("FLOWER_BASIC_AUTH must be user:password "
                              "(several separated by commas)")
        if PLACEHOLDER in password or len(password) < 8:
            raise ConfigError(f"FLOWER_BASIC_AUTH: the password of {user!r} is a placeholder or "
                              "shorter than 8 characters; choose a real one")
        users.append(user)
    return users


def cookie_secret(basic_auth: str | None, explicit: str | None) -> str | None:
    """FLOWER_COOKIE_SECRET, else a secret derived from the basic-auth secret (same on every
    replica and after a restart), else None: Flower then makes a random one."""
    if explicit:
        return explicit
    if basic_auth:
        return hmac.new(basic_auth.encode(), _COOKIE_LABEL, hashlib.sha256).hexdigest()
    return None


def flower_argv(env: Mapping[str, str], basic_auth: str | None,
                extra: Sequence[str] = ()) -> list[str]:
    """The arguments of `celery flower` for this environment."""
    raw_port = env.get("FLOWER_PORT", "").strip() or str(DEFAULT_PORT)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise ConfigError(f"FLOWER_PORT={raw_port!r} is not a valid port")
    argv = ["flower", f"--port={int(raw_port)}"]
    secret = cookie_secret(basic_auth, env.get("FLOWER_COOKIE_SECRET", "").strip() or None)
    if secret:
        argv.append(f"--cookie_secret={secret}")
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    return argv + list(extra)


class LauncherEnv(BaseSettings):
    """The launcher's own variables (not settings), read like them: environment over `.env`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)
    flower_port: str = ""
    flower_cookie_secret: str = ""


def main(argv: Sequence[str] | None = None) -> int:
    from masterplan.settings import load_settings

    extra = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings()
        env = {k.upper(): v for k, v in LauncherEnv().model_dump().items()}
        auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else None
        if settings.broker_url.startswith("memory://"):
            raise ConfigError("REDIS_URL is not set: Flower watches the broker that separate "
                              "workers share, and the embedded mode has none")
        if auth is None and not settings.auth_disabled:
            raise ConfigError("FLOWER_BASIC_AUTH is not set; set FLOWER_BASIC_AUTH=user:password "
                              "(or AUTH_DISABLED=true to run Flower without authentication)")
        users = basic_auth_users(auth) if auth else []
        flower = flower_argv(env, auth, extra)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    who = (f"basic auth for {', '.join(users)}" if users
           else "NO authentication (AUTH_DISABLED=true)")
    print(f"flower: {who}, {flower[1]}", file=sys.stderr, flush=True)

    from workers.celery_app import app, configure_app

    configure_app(app, settings)
    return int(app.start(flower) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
