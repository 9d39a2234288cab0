"""The REST API's routes: one ``APIRouter`` per resource, which ``create_api`` mounts at ``/v2``."""

from typing import Any

import orjson
from pydantic import ConfigDict
from starlette.responses import JSONResponse

# Request bodies: an unknown field is a 400 naming it, not silently dropped.
STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)


class JSONAnswer(JSONResponse):
    """JSON encoded by orjson: a 90-day breakdown of 1,000 namespaces (2.8 MB) takes the
    standard library 80 ms, as long as its ClickHouse query."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
