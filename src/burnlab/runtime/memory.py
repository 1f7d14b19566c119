"""Peak memory of a block of work: what one stage needs, recorded beside its metrics.

On CUDA it is the allocator's peak (`torch.cuda.max_memory_allocated`); elsewhere the process's
resident set, sampled every 20 ms by a background thread (a short spike between samples can be
missed, a stage-long plateau cannot).
"""

from __future__ import annotations

import threading

import psutil
import torch


class PeakMemory:
    def __init__(self, device):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            process = psutil.Process()
            self.peak_bytes = process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, args=(process,), daemon=True)
            self._thread.start()
        return self

    def _sample(self, process) -> None:
        while not self._stop.wait(0.02):
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "rss"
