"""Errors meant for a person: the CLI prints the message alone (no trace) and exits non-zero."""


class UserError(ValueError):
    """A problem with the user's input (recipe, data, paths), with a message that says how to fix it.

    `exit_code` 2 is for invalid input (bad recipe, bad arguments), 1 for failures at run time.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
