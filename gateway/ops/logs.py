"""JSON-lines logging: one object per line, structured fields from ``extra=``; never secrets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import queue
import re
import secrets
import sys
import threading
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

import orjson
from aiohttp.http_exceptions import HttpProcessingError

from ..core.request_context import REQUEST_ID

__all__ = [
    "ACCESS_LOG",
    "AccessLog",
    "BatchingStreamHandler",
    "REDACT_PARSER_ERRORS",
    "UPLOAD_FIELDS",
    "note_upload",
    "JsonFormatter",
    "json_line",
    "request_id_from",
    "setup_logging",
]

# Fields the upload steps learn while serving an upload route (mode, part n of N), for its access line.
UPLOAD_FIELDS: ContextVar[dict[str, object] | None] = ContextVar("upload_fields", default=None)
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def note_upload(**fields: object) -> None:
    """Add fields to the current upload route's access line (no-op outside one)."""
    current = UPLOAD_FIELDS.get()
    if current is not None:
        current.update(fields)


class _RequestIds:
    """New request ids: a random per-process prefix and a counter, unique across replicas and workers without a
    random draw (a syscall) per request."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # workers are forked: each needs its own prefix

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(10)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"


_new_request_id = _RequestIds().next


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-Id when it is a sane token (it ends up in logs), else a new one (32 hex digits)."""
    if header and _ACCEPTABLE_ID.fullmatch(header):
        return header
    return _new_request_id()


_BLANK_RECORD = logging.LogRecord("", 0, "", 0, "", None, None).__dict__
_STANDARD = frozenset(_BLANK_RECORD) | {"message", "asctime"}
# orjson writes a line in a tenth of the stdlib encoder's instructions (the access line: 28k of 64k). Types it
# would encode its own way go to ``str`` as with the stdlib; what it refuses (lone surrogates from undecodable
# request bytes, integers beyond 64 bits) and non-ASCII text (kept as \u escapes: the stream may not be UTF-8)
# go through the stdlib encoder, so every line is the JSON it always was.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


def json_line(entry: dict[str, object]) -> str:
    """``entry`` as one line of compact, ASCII-only JSON; values JSON has no type for become strings."""
    try:
        line = orjson.dumps(entry, default=str, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError
        return _ENCODER.encode(entry)
    return line if line.isascii() else _ENCODER.encode(entry)


# LogRecord sets its own attributes first; fields passed with ``extra=`` come after them (Logger.makeRecord).
_OWN_ATTRIBUTES = len(_BLANK_RECORD)


# What JsonFormatter.entry writes first on every line.
_LINE_START = frozenset({"time", "level", "logger", "message", "request_id"})
_MILLISECONDS = tuple(f".{n:03d}+00:00" for n in range(1000))  # a lookup, not a format, per line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, request id, the ``extra=`` fields.

    It runs once per request with the access log on (the default), hence the cached second and the walk over the
    record's added attributes only."""

    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(record.created, record.levelname.lower(), record.name, record.getMessage())
        for key, value in itertools.islice(record.__dict__.items(), _OWN_ATTRIBUTES, None):
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json_line(entry)

    def entry(self, created: float, level: str, logger: str, message: str) -> dict[str, object]:
        """The fields every line starts with."""
        entry: dict[str, object] = {
            "time": self.time_text(created),
            "level": level,
            "logger": logger,
            "message": message,
        }
        request_id = REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        return entry

    def time_text(self, created: float) -> str:
        """ISO 8601 in UTC with milliseconds, as ``datetime.isoformat(timespec="milliseconds")`` writes it."""
        second = int(created)
        micros = round((created - second) * 1_000_000)  # rounded to the microsecond first, as datetime does
        if micros == 1_000_000:
            second, micros = second + 1, 0
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return self._second_text + _MILLISECONDS[micros // 1000]


class RedactParserErrors(logging.Filter):
    """aiohttp logs every request its HTTP parser refuses with a traceback quoting the offending bytes: header
    lines and bodies, credentials and upload tokens included. Keep one line naming the error, drop the bytes; a
    client's malformed request is a warning, not a gateway error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "refused a malformed request: %s", (type(error).__name__,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


REDACT_PARSER_ERRORS = RedactParserErrors()


MAX_BATCHED_LINES = 256
CLOSE_WAIT_S = 5.0  # for the writer thread to write what is queued at exit
# With a writer thread, how long info lines wait on the loop before they are handed over: each handover wakes the
# thread (a futex call and two context switches on the loop's CPU, about a tenth of a presign's CPU when done every
# loop iteration); a busy server hands over MAX_BATCHED_LINES at a time anyway.
HANDOVER_DELAY_S = 0.05


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines logged during one event-loop iteration with one write, instead of a write (a system call,
    a tenth of a forwarded request's cost here) per access-log line. Warnings and errors, and lines logged outside
    the event loop's thread, go out at once; at most one loop iteration's info lines wait.

    With ``background``, a thread of its own does the writing, in order: a write to a log file can wait on the
    file system (a journal commit) for milliseconds, which the event loop would spend idle with every request in
    flight; the server's p99 on a busy disk doubled (bench/proxy.py). Info lines are then handed to the thread
    every HANDOVER_DELAY_S (or MAX_BATCHED_LINES at a time) rather than every loop iteration. ``close`` writes
    what is queued."""

    def __init__(self, stream: TextIO, *, background: bool = False) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on
        self._flush_thread = 0  # and the thread running it
        self._delay_s = HANDOVER_DELAY_S if background else 0.0
        self._queue: queue.SimpleQueue[str | None] | None = None
        self._writer: threading.Thread | None = None
        if background:
            self._queue = queue.SimpleQueue()
            self._writer = threading.Thread(target=self._write_queued, name="log-writer", daemon=True)
            self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line, at_once=record.levelno >= logging.WARNING)

    def add(self, line: str, *, at_once: bool = False) -> None:
        """Queue a formatted line; it is written at the end of this loop iteration, or now."""
        with self.lock or contextlib.nullcontext():
            self._pending.append(line)
            if at_once or len(self._pending) >= MAX_BATCHED_LINES:
                self.flush()
                return
            scheduled = self._flush_on
            if scheduled is not None and self._flush_thread == threading.get_ident() and scheduled.is_running():
                return  # this thread's running loop has the flush scheduled (get_running_loop costs a getpid call)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            if scheduled is not loop:
                self._flush_on, self._flush_thread = loop, threading.get_ident()
                if self._delay_s:
                    loop.call_later(self._delay_s, self.flush)
                else:
                    loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._flush_on = None
            if self._pending:
                text = "\n".join(self._pending) + "\n"
                self._pending.clear()
                if self._queue is not None and self._writer is not None and self._writer.is_alive():
                    self._queue.put(text)  # under the lock: batches keep their order
                else:
                    self._write(text)

    def close(self) -> None:
        self.flush()
        if self._queue is not None and self._writer is not None and self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(CLOSE_WAIT_S)
        super().close()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "could not write log lines"}))

    def _write_queued(self) -> None:
        assert self._queue is not None
        while (text := self._queue.get()) is not None:
            self._write(text)


class AccessLog:
    """The info line each request makes: the access line (an upload route's carries what the route learnt). Once
    setup_logging has installed the server's handler, lines are formatted and queued straight onto it: building
    and dispatching a LogRecord cost about as much as the line itself, per request. Otherwise (tests, embedding)
    they are ordinary records of their logger. Either way that logger's level decides, and the line is the same."""

    def __init__(self, logger: str = "gateway.access", message: str = "request") -> None:
        self.logger = logging.getLogger(logger)
        self.message = message
        self._handler: BatchingStreamHandler | None = None
        self._formatter = JsonFormatter()

    def write_to(self, handler: BatchingStreamHandler, formatter: JsonFormatter) -> None:
        self._handler, self._formatter = handler, formatter

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def request(
        self,
        method: str,
        route: str,
        path: str,
        status: str,
        elapsed_s: float,
        remote: str | None,
        upload: dict[str, object] | None = None,
    ) -> None:
        """The access line of one request: ``path`` without its query (route_table.loggable_path), ``upload`` the
        fields an upload route added. Straight to the server's handler, the line is one dict literal."""
        entry: dict[str, object] = {
            "time": self._formatter.time_text(time.time()),
            "level": "info",
            "logger": self.logger.name,
            "message": self.message,
            "request_id": REQUEST_ID.get(),
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "ms": round(elapsed_s * 1000, 2),
            "remote": remote,
        }
        if upload:
            entry.update(upload)
        if self._handler is None:  # a record: the formatter writes the fields every line starts with
            self.logger.info(self.message, extra={k: v for k, v in entry.items() if k not in _LINE_START})
            return
        if not entry["request_id"]:
            del entry["request_id"]  # as on every other line: only within a request
        self._handler.add(json_line(entry))


ACCESS_LOG = AccessLog()


def setup_logging(level: str, *, background: bool = False) -> None:
    """JSON lines on stderr at ``level``; ``background``: written by a thread of their own (the serving process;
    not a supervisor about to fork workers, which must not fork with a thread holding the stream's lock)."""
    # Not in the JSON lines, and LogRecord would ask the kernel for the pid of every record.
    logging.logProcesses = logging.logMultiprocessing = logging.logThreads = False
    # Nor is the caller's file and line: finding them walks the stack on every record (logging HOWTO, Optimization).
    logging._srcfile = None
    handler = BatchingStreamHandler(sys.stderr, background=background)
    formatter = JsonFormatter()
    handler.setFormatter(formatter)
    ACCESS_LOG.write_to(handler, formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates our structured lines; keep its errors.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(REDACT_PARSER_ERRORS)
