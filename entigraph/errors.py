"""The exception types a user sees as a one-line message (the CLI prints it and exits 2, or 1)."""


class EntigraphError(Exception):
    """Bad input or a condition the user can fix; the message names the field and the fix."""

    exit_code = 2


class ConfigError(EntigraphError):
    """A config value out of its allowed range."""


class CorpusError(EntigraphError):
    """A corpus file that cannot be read: missing, malformed, or inconsistent."""


class SweepIncomplete(EntigraphError):
    """Some jobs of a sweep (grid runs, search trials) failed, said once every other job has
    run. Exit code 1, not 2: the sweep's input was fine, and the others' results stand."""

    exit_code = 1

    def __init__(self, failed: int, jobs: str, where: str, then: str) -> None:
        super().__init__(f"{failed} of {jobs} failed (each one's error is in {where}); {then}")
