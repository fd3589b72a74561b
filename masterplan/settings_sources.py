"""Where settings come from, for pydantic-settings: init kwargs, then the environment (or a
mapping standing in for it), then `.env`, then the caller's defaults; and their errors as one
line naming the variable. masterplan/settings.py defines what is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from masterplan.errors import ConfigError


@dataclass(frozen=True)
class Inputs:
    """Where the model being built reads: `environ` (None: `os.environ`), then `env_file` (None:
    no `.env`), then the caller's `defaults`, each variable named `prefix` + field name.
    `load_settings` sets them for the models it builds; `Settings()` alone gets these defaults."""

    environ: Mapping[str, str] | None = None
    env_file: str | None = ".env"
    defaults: Mapping[str, str] = field(default_factory=dict)
    prefix: str = ""


_INPUTS: ContextVar[Inputs | None] = ContextVar("masterplan_settings_inputs", default=None)


class MappingSource(EnvSettingsSource):
    """The environment source, fed from a given mapping (`os.environ` or another)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str],
                 env_prefix: str) -> None:
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=False, env_prefix=env_prefix)

    # pydantic-settings' own hook for where the variables come from (its .env source uses it too).
    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._environ.items()}


class EnvSettings(BaseSettings):
    """Init kwargs > environment (or the given mapping) > `.env` > defaults; names ignore case."""

    # The `.env` file and the prefix come from Inputs, not from here nor from `_env_*` kwargs.
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        i = _INPUTS.get() or Inputs()
        environ = os.environ if i.environ is None else i.environ
        return (
            init_settings,
            MappingSource(settings_cls, environ, i.prefix),
            DotEnvSettingsSource(settings_cls, env_file=i.env_file, case_sensitive=False,
                                 env_prefix=i.prefix),
            *((MappingSource(settings_cls, i.defaults, i.prefix),) if i.defaults else ()),
        )


@contextmanager
def reading(inputs: Inputs) -> Iterator[None]:
    """The EnvSettings models built inside this block read from `inputs`."""
    token = _INPUTS.set(inputs)
    try:
        yield
    finally:
        _INPUTS.reset(token)


# Pydantic's errors that read better with the value shown (never raised by a secret's field).
_SHOW_VALUE = {"int_parsing": "is not a valid int", "int_from_float": "is not a valid int",
               "float_parsing": "is not a valid float", "greater_than_equal": "must not be negative"}


def config_error(exc: ValidationError, prefix: str = "", *, show_value: bool = False) -> ConfigError:
    """The first error as one line naming its variable."""
    err = exc.errors()[0]
    var = f"{prefix}{err['loc'][0]}".upper() if err["loc"] else "settings"
    if err["type"] == "value_error":  # our validators' messages name their variables
        message = str(err.get("ctx", {}).get("error", err["msg"]))
        return ConfigError(message if not err["loc"] or var in message else f"{var}: {message}")
    if show_value and err["type"] in _SHOW_VALUE and isinstance(err["input"], str):
        return ConfigError(f"{var}={err['input']!r} {_SHOW_VALUE[err['type']]}")
    return ConfigError(f"{var}: {err['msg']}")
