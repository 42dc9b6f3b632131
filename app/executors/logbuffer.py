"""A bounded, thread-safe text sink for a task's captured output.

It keeps the first half of its cap and the most recent half; whatever falls in between is counted and
replaced by a marker. Sizes are UTF-8 bytes. Memory stays within about twice the cap however much is
written (the tail is trimmed lazily so that many small writes stay cheap).
"""

from __future__ import annotations

import threading


class LogBuffer:
    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._head_cap = max_bytes // 2
        self._tail_cap = max_bytes - self._head_cap
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0
        self._lock = threading.Lock()

    # -- file-like ------------------------------------------------------------------------------
    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        data = s.encode("utf-8", "replace")
        with self._lock:
            self._total += len(data)
            room = self._head_cap - len(self._head)
            if room > 0:
                self._head += data[:room]
                data = data[room:]
            if data:
                if len(data) >= self._tail_cap:
                    self._tail = bytearray(data[-self._tail_cap :])
                else:
                    self._tail += data
                    if len(self._tail) > 2 * self._tail_cap:
                        del self._tail[: len(self._tail) - self._tail_cap]
        return len(s)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return False

    # -- reading --------------------------------------------------------------------------------
    @property
    def bytes_written(self) -> int:
        return self._total

    def getvalue(self) -> str:
        with self._lock:
            head = bytes(self._head)
            tail = bytes(self._tail[-self._tail_cap :]) if self._tail else b""
            truncated = self._total - len(head) - len(tail)
        if truncated <= 0:
            return (head + tail).decode("utf-8", "replace")
        # a cut may split a multi-byte character: drop the partial bytes at the edges (and count them)
        head_text = head.decode("utf-8", "ignore")
        tail_text = tail.decode("utf-8", "ignore")
        truncated += len(head) - len(head_text.encode()) + len(tail) - len(tail_text.encode())
        return head_text + f"\n... [{truncated} bytes truncated] ...\n" + tail_text

    def __str__(self) -> str:
        return self.getvalue()
