"""User errors: problems with the user's input, reported as one paragraph without a traceback.

Anything raised as `UserError` reaches the user as `burnlab: <message>` and exit status 2
(see `burnlab.launch.cli`), and so do the errors Hydra and OmegaConf raise over the command line and
the config (a bad override, a value of the wrong type, an unknown key or config option), in
Hydra's words but led by the key; every other exception is a bug and keeps its traceback.
"""

import re
from dataclasses import fields, is_dataclass

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
)

# OmegaConf's indented lines under its message (full_key: ..., reference_type=..., object_type=...)
_OMEGACONF_DETAIL = re.compile(r"^\s+(full_key|reference_type|object_type)\b")


class UserError(Exception):
    """Bad input from the user: a config value, a file, a folder."""


class ConfigError(UserError):
    """A config value that is not allowed: names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config key `{key}` has value {value!r}, which is not allowed: {allowed}.")

    def under(self, prefix: str) -> "ConfigError":
        """The same error with its key placed under `prefix` (e.g. `stages.unet_hi`)."""
        return ConfigError(f"{prefix}.{self.key}", self.value, self.allowed)


def schema_keys(schema, parent: str) -> str:
    """What a config node `parent` (dotted, empty at the top) with the dataclass `schema` holds."""
    where = f"`{parent}`" if parent else "the top level"
    return f"{where} has the keys " + ", ".join(f.name for f in fields(schema))


USER_ERRORS = (UserError, HydraException, OmegaConfBaseException)


def paragraph(error: Exception) -> str:
    """One of USER_ERRORS as one paragraph (one line): a Hydra or OmegaConf error led by
    `config key `...`:` where the key is known, then Hydra's and OmegaConf's own sentences."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, MissingConfigException) and error.options:  # model=nope, hydra/launcher=nope
        group, _, option = error.missing_cfg_file.rpartition("/")
        return str(ConfigError(group, option, "one of " + ", ".join(error.options)))
    texts, key = [str(error)], None
    if isinstance(error, OverrideParseException):  # its message does not repeat the override
        key = error.override.split("=", 1)[0].lstrip("+~")
        texts.insert(0, f"cannot parse the override {error.override}:")
    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    if isinstance(cause, OmegaConfBaseException):
        key = cause.full_key or key
        if cause is not error:
            texts.append(str(cause))
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and is_dataclass(cause.object_type):  # no such key
            texts.append(schema_keys(cause.object_type, key.rpartition(".")[0]))
    lines = [
        line.strip()
        for text in texts
        for line in text.splitlines()
        if line.strip() and not _OMEGACONF_DETAIL.match(line)
    ]
    text = " ".join(line if line.endswith((".", ":")) else line + "." for line in lines)
    return f"config key `{key}`: {text}" if key else text


class Interrupted(UserError):
    """A SIGINT or SIGTERM that burnlab honoured: the step in progress finished and the training
    state was saved. The command line adds how to resume and exits with 128 + the signal."""

    def __init__(self, message: str, signal_number: int):
        self.exit_code = 128 + signal_number
        super().__init__(message)


class NonFiniteLoss(UserError):
    """A training loss or gradient that is NaN or infinite: the stage stops and is marked failed."""
