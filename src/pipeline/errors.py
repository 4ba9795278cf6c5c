"""The one exception type users see: the CLI prints it and exits non-zero, with no traceback."""


class PipelineError(Exception):
    """A problem with the user's input (config, data file, upstream output), named precisely."""
