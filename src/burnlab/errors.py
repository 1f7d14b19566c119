"""User errors: problems with the user's input, reported as one paragraph without a traceback.

Anything raised as `UserError` reaches the user as `burnlab: <message>` and exit status 2
(see `burnlab.cli`); every other exception is a bug and keeps its traceback.
"""


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


class Interrupted(UserError):
    """A SIGINT or SIGTERM that burnlab honoured: the step in progress finished and the training
    state was saved. The command line adds how to resume and exits with 128 + the signal."""

    def __init__(self, message: str, signal_number: int):
        self.exit_code = 128 + signal_number
        super().__init__(message)


class NonFiniteLoss(UserError):
    """A training loss or gradient that is NaN or infinite: the stage stops and is marked failed."""
