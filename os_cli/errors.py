"""Errors meant for a person: the CLI prints the message alone (no trace) and exits non-zero."""


class UserError(ValueError):
    """A problem with the user's input (recipe, data, paths), with a message that says how to fix it.

    `exit_code` 2 is for invalid input (bad recipe, bad arguments), 1 for failures at run time.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


_KINDS = (
    (bool, "a boolean"),
    (str, "a string"),
    (int, "an integer"),
    (float, "a number"),
    ((list, tuple), "a list"),
    (dict, "an object"),
)


def kind_of(value) -> str:
    """A value from a user's file in words for a message: `null`, `a string`, `an integer`, `a number`, `a list`,
    `an object`. Never a Python class name: JSON numbers are read as int and float subclasses that keep
    how the file wrote them (prompts/datasets.py), and a name like `_RawInt` means nothing to the person reading."""
    if value is None:
        return "null"
    return next((word for types, word in _KINDS if isinstance(value, types)), type(value).__name__)
