"""The JSON response every Serve app answers with."""

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSONAnswer(JSONResponse):
    """JSON encoded by orjson: a 90-day breakdown of 1,000 namespaces (2.8 MB) takes the
    standard library 80 ms, as long as its ClickHouse query; Metroculus' answer of 20,000
    pods' costs (5.4 MB) 55 ms against orjson's 4."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
