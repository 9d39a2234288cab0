"""``python -m exporter``: serve /metrics and poll Kubecost until SIGTERM or SIGINT.

Every setting of :class:`ExporterSettings` is read from its environment variable and can be
overridden by a flag named after it (``KUBECOST_URL`` → ``--kubecost-url``,
``EXPORTER_PORT`` → ``--port``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from exporter.server import serve
from k8scost.settings import ExporterSettings, SettingsError, from_env

log = logging.getLogger("exporter")


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


# Checks beyond the type, by field: (predicate, what the value must be).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kubecost_url": (lambda v: v.startswith(("http://", "https://")), "must start with http:// or https://"),
    "allocation_path": (lambda v: v.startswith("/"), "must start with /"),
    "assets_path": (lambda v: v.startswith("/"), "must start with /"),
    "scrape_interval": (_positive, "must be a positive number of seconds"),
    "request_timeout": (_positive, "must be a positive number of seconds"),
    "stale_after_failures": (lambda v: v >= 0, "must be 0 or more"),
    "listen_port": (lambda v: 0 < v < 65536, "must be a port number, 1 to 65535"),
}


def _flag(field: dataclasses.Field[Any]) -> str:
    return "--" + field.metadata["env"].lower().removeprefix("exporter_").replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m exporter",
        description="Export Kubecost/OpenCost allocations as hourly-rate gauges for Prometheus.",
    )
    for field in dataclasses.fields(ExporterSettings):
        env = field.metadata["env"]
        parser.add_argument(
            _flag(field),
            dest=field.name,
            type=type(field.default),
            metavar=env,
            help=f"{field.metadata['doc']} (default: ${env}, else {field.default!r})",
        )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> ExporterSettings:
    """Settings from the environment, flags winning; a bad value exits 2 with an argparse error."""
    parser = _parser()
    flags = {name: value for name, value in vars(parser.parse_args(argv)).items() if value is not None}
    try:
        settings = from_env(ExporterSettings, **flags)
    except SettingsError as error:
        parser.error(str(error))
    for field in dataclasses.fields(ExporterSettings):
        if field.name in _RULES:
            check, rule = _RULES[field.name]
            value = getattr(settings, field.name)
            if not check(value):
                parser.error(f"{_flag(field)} / {field.metadata['env']} {rule}, got {value!r}")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter; 0 on a signalled stop."""
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # else one INFO line per request
    log.info("allocation-exporter starting: %s", settings)
    asyncio.run(serve(settings))
    log.info("allocation-exporter stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
