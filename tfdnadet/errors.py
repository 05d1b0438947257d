"""Errors that the CLI turns into one clear line and a non-zero exit."""


class TfdnadetError(Exception):
    """A problem with the user's input (paths, images, configs, names), not a bug."""
