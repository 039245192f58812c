"""The one exception type a user sees as a one-line message (the CLI prints it and exits 2)."""


class EntigraphError(Exception):
    """Bad input or a condition the user can fix; the message names the field and the fix."""


class ConfigError(EntigraphError):
    """A config value out of its allowed range."""


class CorpusError(EntigraphError):
    """A corpus file that cannot be read: missing, malformed, or inconsistent."""
