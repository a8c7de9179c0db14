"""The project's own exceptions.

Every error a user can cause or meet carries a hint that says what to do about it.
botocore and paramiko errors are translated into these where they are raised, and the
management commands turn them into ``CommandError``.
"""


class HeliosAWSError(Exception):
    """A problem the user can act on: ``message`` says what is wrong, ``hint`` how to fix it."""

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self):
        if self.hint:
            return f"{self.message}\nHint: {self.hint}"
        return self.message


class ConfigError(HeliosAWSError):
    """Bad deployment parameters, project layout or generated files."""


class AWSError(HeliosAWSError):
    """An AWS call failed, or AWS is not in the state the deployment needs."""


class HostError(HeliosAWSError):
    """The SSH host cannot be reached, cannot be trusted, or a command on it failed."""


class HostTimeout(HostError):
    """A command on the host did not finish within its deadline."""


class StepTimeout(HeliosAWSError):
    """A bounded wait ran out."""
