"""The one exception type that means "the user's input is wrong" (exit code 2).

Anything else that escapes a command is a failure of cai or of its environment (exit code 1).
"""


class InputError(Exception):
    """Bad input a user can fix: a config key, a file, a field. The message says which."""
