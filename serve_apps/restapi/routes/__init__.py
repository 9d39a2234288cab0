"""The REST API's routes: one ``APIRouter`` per resource, which ``create_api`` mounts at ``/v2``."""

from pydantic import ConfigDict

# Request bodies: an unknown field is a 400 naming it, not silently dropped.
STRICT = ConfigDict(extra="forbid", str_strip_whitespace=True)

