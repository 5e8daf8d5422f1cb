"""Service logs are one JSON object per line, exceptions from our code and from libraries included."""

import io
import json
import logging

import structlog

from agentnas.bus.logs import configure_logging


def test_exceptions_are_one_json_line_each():
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    try:
        raise ValueError("disk full\nsecond line")
    except ValueError:
        logging.getLogger("nats.aio.client").exception("library failure")
        structlog.get_logger("agentnas.recorder").exception("commit failed")
    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["library failure", "commit failed"]
    assert all("disk full" in json.dumps(r["exception"]) for r in records)
    assert records[0]["logger"] == "nats.aio.client" and records[0]["level"] == "error"


def test_library_info_lines_stay_quiet():
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: POST ...")
    logging.getLogger("nats").warning("reconnecting")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["reconnecting"]
