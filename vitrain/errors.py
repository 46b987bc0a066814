"""The error every layer raises for a bad option, below the config and the recipes that both raise it."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option."""
