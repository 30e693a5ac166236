"""The one exception type for bad user input.

Anything a user can fix (a missing folder, a wrong flag, a corrupt file, weights that are not
on disk) raises ``DmlrsError`` with a message that names the file or flag and what to do.
Entry points catch it and print ``error: <message>`` without a traceback.

Raised inside a DataLoader worker, torch re-raises it in the main process as
``type(exc)(<"Caught ... Original Traceback ..." text>)``; the constructor recognises that text
and keeps only the original message, so the one-line ``error:`` survives worker processes.
"""


def strip_worker_traceback(text: str, error_name: str) -> str:
    """The original one-line message inside the text a DataLoader worker sends back for an exception.

    torch re-raises an exception from a worker as ``type(exc)(text)`` where ``text`` is
    ``"Caught <Name> in DataLoader worker process N.\nOriginal Traceback ...\n<module>.<Name>: <message>"``;
    this returns ``<message>`` (the text itself when it is not such a wrapper).
    """
    if not (text.startswith("Caught ") and "Traceback" in text):
        return text
    marker = f"{error_name}: "
    at = text.rfind(marker)
    return text[at + len(marker):].strip() if at >= 0 else text


class DmlrsError(Exception):
    """User-facing error whose message is the whole explanation (no traceback needed)."""

    def __init__(self, message: str = "", *args) -> None:
        super().__init__(strip_worker_traceback(str(message), type(self).__name__), *args)
