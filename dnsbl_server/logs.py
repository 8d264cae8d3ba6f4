"""How `dnsbl serve` writes its log on stderr: `--log-format text` (the default, for people) or `json`
(for log shippers: one JSON object per line).

Rules:
- A JSON line holds `time` (ISO 8601 UTC, milliseconds), `level`, `logger`, `message` (arguments
  applied), `pid` (workers share stderr), then every field a call passed with `extra={...}`, and
  `exception` (the formatted traceback) when there is one. Nothing else; no line breaks inside a line.
- Values JSON cannot hold are written as their `str()`.
"""

from __future__ import annotations

import json
import logging
import time

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# What every LogRecord carries: anything else on a record came from `extra` and is written as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        out.update({key: value for key, value in vars(record).items() if key not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def setup(level: int, log_format: str = "text") -> None:
    """The root logger on stderr, in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
