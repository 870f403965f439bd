"""The one exception type for errors a user can cause."""


class AutopruneError(Exception):
    """A problem with the user's input (model, data, plan, target...). The message says what to do.

    The CLI prints it as one line on stderr and exits with code 2.
    """
