"""Transfer progress on stderr: one line redrawn on a terminal, a plain log line every few seconds elsewhere.

The formatting functions are pure; ``Progress`` only counts, and a ticker task draws what it counted.
"""

from __future__ import annotations

import asyncio
import collections
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, TextIO

__all__ = ["Progress", "Snapshot", "format_bytes", "format_eta", "format_rate", "render_line"]

TTY_INTERVAL_S: Final = 0.25
PLAIN_INTERVAL_S: Final = 5.0
RATE_WINDOW_S: Final = 5.0
_UNITS: Final = ("KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(count: float) -> str:
    if count < 1024:
        return f"{int(count)} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_rate(bytes_per_s: float) -> str:
    return f"{format_bytes(bytes_per_s)}/s"


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    done_bytes: int
    total_bytes: int | None
    rate_bps: float
    parts_done: int = 0
    parts_total: int | None = None

    @property
    def eta_s(self) -> float | None:
        if self.total_bytes is None or self.rate_bps <= 0:
            return None
        return max(self.total_bytes - self.done_bytes, 0) / self.rate_bps


def render_line(label: str, snapshot: Snapshot) -> str:
    """e.g. ``push  512.0 MiB / 1.2 GiB  42%  95.3 MiB/s  ETA 0:07  parts 3/10``."""
    fields = [label]
    if snapshot.total_bytes is not None:
        percent = 100 * snapshot.done_bytes // snapshot.total_bytes if snapshot.total_bytes else 100
        fields += [f"{format_bytes(snapshot.done_bytes)} / {format_bytes(snapshot.total_bytes)}", f"{percent}%"]
    else:
        fields.append(format_bytes(snapshot.done_bytes))
    fields.append(format_rate(snapshot.rate_bps))
    if snapshot.total_bytes is not None:
        fields.append(f"ETA {format_eta(snapshot.eta_s)}")
    if snapshot.parts_total:
        fields.append(f"parts {snapshot.parts_done}/{snapshot.parts_total}")
    return "  ".join(fields)


class Progress:
    """Counts bytes and parts; ``async with`` draws them until the block ends.

    ``stream=None`` (``--quiet``) draws nothing and prints no notes.
    """

    def __init__(
        self,
        label: str,
        *,
        total_bytes: int | None = None,
        total_parts: int | None = None,
        stream: TextIO | None = sys.stderr,
        tty: bool | None = None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total_bytes = total_bytes
        self.total_parts = total_parts
        self.done_bytes = 0
        self.parts_done = 0
        self.stream = stream
        self.tty = bool(tty if tty is not None else stream is not None and stream.isatty())
        self.interval_s = interval_s if interval_s is not None else (TTY_INTERVAL_S if self.tty else PLAIN_INTERVAL_S)
        self.clock = clock
        self.started = clock()
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(self.started, 0)])
        self._ticker: asyncio.Task[None] | None = None
        self._drawn = False

    # -- counting (also called from hashing threads: single int updates) ---------------------------------

    def add(self, count: int) -> None:
        self.done_bytes += count

    def rewind(self, count: int) -> None:
        """A failed attempt's bytes will be sent again."""
        self.done_bytes = max(self.done_bytes - count, 0)

    def part_done(self) -> None:
        self.parts_done += 1

    def restart(self, label: str, *, total_bytes: int | None, total_parts: int | None = None, done: int = 0) -> None:
        """A new phase (hashing, then uploading) on the same display."""
        self.label = label
        self.total_bytes = total_bytes
        self.total_parts = total_parts
        self.done_bytes = done
        self.parts_done = 0
        self.started = self.clock()
        self._samples = collections.deque([(self.started, done)])

    # -- reading -------------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        now = self.clock()
        self._samples.append((now, self.done_bytes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        first_time, first_bytes = self._samples[0]
        elapsed = now - first_time
        rate = (self.done_bytes - first_bytes) / elapsed if elapsed > 0 else 0.0
        return Snapshot(self.done_bytes, self.total_bytes, max(rate, 0.0), self.parts_done, self.total_parts)

    def average_rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.done_bytes / elapsed if elapsed > 0 else 0.0

    # -- drawing -------------------------------------------------------------------------------------------

    def draw(self) -> None:
        if self.stream is None:
            return
        line = render_line(self.label, self.snapshot())
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A message between progress lines (not shown with --quiet)."""
        if self.stream is None:
            return
        self._clear_line()
        self.stream.write(message + "\n")
        self.stream.flush()

    def _clear_line(self) -> None:
        if self.tty and self._drawn and self.stream is not None:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.draw()

    async def __aenter__(self) -> Progress:
        if self.stream is not None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # our own task is being cancelled, not just the ticker
            self._ticker = None
        if self.stream is None:
            return
        if self.tty:
            if exc_type is None:
                self.draw()
                self.stream.write("\n")
            else:
                self._clear_line()
            self.stream.flush()
        elif exc_type is None and self.done_bytes:
            self.draw()
