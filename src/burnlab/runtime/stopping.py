"""Stopping cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's kill): the handler only takes
note, the trainer finishes the optimizer step in progress, saves its state and raises
`Interrupted`, and the command line prints how to resume. A second signal acts at once, as if
burnlab had installed nothing.
"""

from __future__ import annotations

import signal
import threading
from typing import Dict, Optional

from burnlab.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While entered (in the main thread), records the first SIGINT/SIGTERM instead of dying."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._note)
        return self

    def _note(self, number, frame) -> None:
        self.received = number
        signal.signal(number, self._previous[number])

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def interrupted(self, where: str) -> Interrupted:
        name = signal.Signals(self.received).name
        return Interrupted(f"stopped by {name} {where}.", self.received)
