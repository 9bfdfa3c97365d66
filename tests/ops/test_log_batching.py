"""The log handler batches the info lines of one event-loop iteration into one write, and writes warnings,
errors and lines logged outside the loop at once: nothing is lost, only coalesced. The access line is the same
whether written straight to that handler (the server) or as a logging record."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.core.request_context import REQUEST_ID
from gateway.ops.logs import MAX_BATCHED_LINES, AccessLog, BatchingStreamHandler, JsonFormatter, json_line
from tests.support.processes import free_port
from tests.support.proxy_harness import gateway_process


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def logger_writing_to(stream: CountingStream) -> logging.Logger:
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.batching.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def messages(stream: CountingStream) -> list[str]:
    return [json.loads(line)["message"] for line in stream.getvalue().splitlines()]


async def test_info_lines_of_one_loop_iteration_go_out_in_one_write() -> None:
    stream = CountingStream()
    log = logger_writing_to(stream)
    for n in range(3):
        log.info("request %d", n)
    assert stream.writes == 0  # not yet: the loop has not come round
    await asyncio.sleep(0)
    assert stream.writes == 1
    assert messages(stream) == ["request 0", "request 1", "request 2"]


async def test_a_warning_goes_out_at_once_with_the_lines_before_it() -> None:
    stream = CountingStream()
    log = logger_writing_to(stream)
    log.info("first")
    log.warning("trouble")
    assert messages(stream) == ["first", "trouble"]


async def test_a_full_batch_is_written_without_waiting_for_the_loop() -> None:
    stream = CountingStream()
    log = logger_writing_to(stream)
    for n in range(MAX_BATCHED_LINES):
        log.info("line %d", n)
    assert len(messages(stream)) == MAX_BATCHED_LINES


async def test_lines_from_another_thread_are_written_at_once() -> None:
    stream = CountingStream()
    log = logger_writing_to(stream)
    worker = threading.Thread(target=log.info, args=("from a thread",))
    worker.start()
    worker.join(5)
    assert messages(stream) == ["from a thread"]


async def test_a_line_from_another_thread_goes_out_at_once_while_the_loop_has_a_flush_scheduled() -> None:
    stream = CountingStream()
    log = logger_writing_to(stream)
    log.info("on the loop")  # its flush is scheduled for the end of this iteration
    worker = threading.Thread(target=log.info, args=("from a thread",))
    worker.start()
    worker.join(5)
    assert messages(stream) == ["on the loop", "from a thread"]


async def test_a_background_handler_hands_info_lines_to_its_thread_in_batches_not_every_iteration() -> None:
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, background=True)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"test.handover.{id(stream)}")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    log.info("first")
    for _ in range(3):
        await asyncio.sleep(0)
    log.info("second")
    assert stream.writes == 0  # still on the loop: no wake-up of the writer thread per iteration
    handler.close()
    assert messages(stream) == ["first", "second"]
    assert stream.writes == 1


def test_outside_an_event_loop_every_line_is_written_at_once() -> None:
    stream = CountingStream()
    log = logger_writing_to(stream)
    log.info("one")
    log.info("two")
    assert stream.writes == 2
    assert messages(stream) == ["one", "two"]


def test_json_lines_carry_iso_times_and_the_extra_fields_in_order() -> None:
    formatter = JsonFormatter()
    for created in (0.0, 1764073845.0, 1764073845.5, 1764073845.123456, 1764073846.999, 1764073846.9999996):
        record = logging.makeLogRecord({"name": "gateway.access", "msg": "request", "levelno": 20})
        record.levelname = "INFO"
        record.created = created
        record.__dict__.update({"route": "proxy", "status": "200", "_private": 1})
        entry = json.loads(formatter.format(record))
        assert entry["time"] == datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert list(entry) == ["time", "level", "logger", "message", "route", "status"]


def test_a_loop_that_ended_with_a_flush_pending_does_not_hold_back_the_next_loops_lines() -> None:
    stream = CountingStream()
    log = logger_writing_to(stream)

    first = asyncio.new_event_loop()

    def log_and_stop() -> None:
        log.info("one")  # its flush is scheduled for the next iteration, which this loop will not run
        first.stop()

    first.call_soon(log_and_stop)
    first.run_forever()
    first.close()
    assert messages(stream) == []

    async def log_and_yield(text: str) -> None:
        log.info(text)
        await asyncio.sleep(0)

    asyncio.run(log_and_yield("two"))
    assert messages(stream) == ["one", "two"]


@pytest.mark.parametrize("request_id", ["req-1", ""])
async def test_the_access_line_is_the_same_written_straight_to_the_handler_or_as_a_record(request_id: str) -> None:
    upload: dict[str, object] = {"image_id": "42", "mode": "adopt"}
    line_of = ("PUT", "upload-part", '/v2/imagefile/"42"/_multipart', "200", 0.0015, "127.0.0.1", upload)
    token = REQUEST_ID.set(request_id)
    try:
        straight = CountingStream()
        handler = BatchingStreamHandler(straight)
        formatter = JsonFormatter()
        handler.setFormatter(formatter)
        direct = AccessLog()
        direct.write_to(handler, formatter)
        direct.request(*line_of)
        await asyncio.sleep(0)

        recorded = CountingStream()
        access = AccessLog(f"test.batching.{id(recorded)}")
        logger_writing_to(recorded)  # that logger, with its own handler: the access log writes records to it
        access.request(*line_of)
        await asyncio.sleep(0)
    finally:
        REQUEST_ID.reset(token)
    (line,) = straight.getvalue().splitlines()
    (record_line,) = recorded.getvalue().splitlines()
    ours, theirs = json.loads(line), json.loads(record_line)
    assert ours.pop("time")[:10] == theirs.pop("time")[:10]
    assert ours == theirs | {"logger": "gateway.access"}
    fields = ["method", "route", "path", "status", "ms", "remote", "image_id", "mode"]
    assert list(ours) == ["level", "logger", "message", *(["request_id"] if request_id else []), *fields]
    assert (ours["path"], ours["ms"], ours["mode"]) == ('/v2/imagefile/"42"/_multipart', 1.5, "adopt")


async def test_the_server_writes_one_access_line_per_request_with_its_request_id(
    aiohttp_server: Callable[..., Awaitable[Any]], tmp_path: Path
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    upstream = await aiohttp_server(app)
    async with gateway_process(str(upstream.make_url("")), tmp_path, SERVER_LOG_LEVEL="info") as gateway:
        async with aiohttp.ClientSession() as session:
            for n in range(3):
                async with session.get(f"{gateway.url}/v1/version", headers={"X-Request-Id": f"id-{n}"}) as answer:
                    assert answer.status == 200
    lines = [json.loads(line) for line in gateway.log_path.read_text().splitlines()]
    access = [line for line in lines if line["logger"] == "gateway.access" and line["route"] != "gateway"]
    assert [(a["route"], a["status"], a["request_id"], a["path"]) for a in access] == [
        ("proxy", "200", f"id-{n}", "/v1/version") for n in range(3)
    ]


def test_lines_stay_ascii_json_whatever_the_values_hold() -> None:
    # Undecodable request bytes arrive as lone surrogates; orjson refuses those and integers beyond 64 bits, and
    # writes non-ASCII text raw: such lines fall back to the stdlib encoder, so every line stays ASCII JSON.
    fields: dict[str, object] = {
        "path": "/v1/\udcff",
        "name": "é",
        "big": 2**70,
        "when": datetime(2024, 1, 2, tzinfo=UTC),
        "kinds": {"part"},
        "ms": 1.5,
    }
    line = json_line(fields)
    assert line.isascii()
    assert json.loads(line) == fields | {"when": "2024-01-02 00:00:00+00:00", "kinds": "{'part'}"}


async def test_the_server_writes_one_access_line_per_upload_route_request_straight_to_its_log(
    tmp_path: Path,
) -> None:
    upstream = f"http://127.0.0.1:{free_port()}"  # never called: the gateway answers upload routes itself
    async with gateway_process(upstream, tmp_path, SERVER_LOG_LEVEL="info") as gateway:
        async with aiohttp.ClientSession() as session:
            headers = {"X-Request-Id": "part-1"}
            async with session.put(f"{gateway.url}/v2/imagefile/42/_multipart", data=b"{", headers=headers) as answer:
                assert answer.status == 400
    lines = [json.loads(line) for line in gateway.log_path.read_text().splitlines()]
    mine = [line for line in lines if line.get("request_id") == "part-1"]
    assert [(line["logger"], line["message"], line["route"]) for line in mine] == [
        ("gateway.access", "request", "upload-part"),
    ]
    # The access line of an upload route also names its image; the status is what the client got.
    assert (mine[0]["image_id"], mine[0]["status"], mine[0]["path"]) == ("42", "400", "/v2/imagefile/42/_multipart")


async def test_a_background_handler_writes_off_the_event_loop_thread_in_order_and_close_writes_the_rest() -> None:
    writers: list[threading.Thread] = []

    class RecordingStream(CountingStream):
        def write(self, text: str) -> int:
            writers.append(threading.current_thread())
            return super().write(text)

    stream = RecordingStream()
    handler = BatchingStreamHandler(stream, background=True)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"test.background.{id(stream)}")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    for n in range(3):
        log.info("request %d", n)
    await asyncio.sleep(0)
    log.warning("trouble")
    log.info("last")
    handler.close()  # "last" is still pending, and batches may still be queued: close writes them all
    assert messages(stream) == ["request 0", "request 1", "request 2", "trouble", "last"]
    assert writers and threading.current_thread() not in writers  # a slow disk never stalls the loop
