"""SIGINT/SIGTERM: finish the current step, write ``last.pt``, exit cleanly.

The first signal only sets a flag that the training loop checks after every optimizer step; a
second SIGINT restores Python's default behaviour (KeyboardInterrupt) for users who really
want out. Checkpoints are written atomically, so even that cannot corrupt one.
"""
from __future__ import annotations

import signal
import threading


class GracefulInterrupt:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict = {}

    def request(self, name: str = "request") -> None:
        self.requested = True
        self.signal_name = name

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)
        print(f"\n{self.signal_name} received: finishing the current step and saving last.pt "
              "(press Ctrl-C again to abort at once)", flush=True)

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
