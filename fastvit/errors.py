"""Errors a user can cause (bad path, name, shape, corrupt file).

The CLI turns a UserError into one line on stderr and exit code 2, with no traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message is one complete line."""
