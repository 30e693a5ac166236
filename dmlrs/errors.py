"""The one exception type for bad user input.

Anything a user can fix (a missing folder, a wrong flag, a corrupt file, weights that are not
on disk) raises ``DmlrsError`` with a message that names the file or flag and what to do.
Entry points catch it and print ``error: <message>`` without a traceback.
"""


class DmlrsError(Exception):
    """User-facing error whose message is the whole explanation (no traceback needed)."""
