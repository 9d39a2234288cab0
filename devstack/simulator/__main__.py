"""Command line: serve one cluster of a simulated estate as its Kubecost and usage exporters would.

Kubecost's API, and the cluster's cAdvisor (/metrics/cadvisor), kube-state-metrics
(/kube-state-metrics/metrics) and node-exporter (/node-exporter/metrics):

    python -m devstack.simulator --cluster NAME [--spec estate.json | --seed N --clusters N
        --namespaces N --pods N --nodes N --start UNIX] [--host 127.0.0.1] [--port 9003] [--write-spec out.json]
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

import uvicorn

from devstack.simulator.server import create_app
from devstack.simulator.spec import DEFAULT_START, Estate, from_json, generate_estate, to_json

log = logging.getLogger("devstack.simulator")

# Defaults of the generation options; the parser leaves them None so that mixing them with --spec is refused.
_GENERATION = {"seed": 0, "clusters": 1, "namespaces": 3, "pods": 4, "nodes": 3, "start": DEFAULT_START}


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port")
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True, help="name of the cluster of the estate to serve")
    parser.add_argument("--spec", type=Path, help="estate JSON (as written by --write-spec); else one is generated")
    parser.add_argument("--seed", type=int, help="seed of the generated estate (default 0)")
    parser.add_argument("--clusters", type=int, help="clusters to generate (default 1)")
    parser.add_argument("--namespaces", type=int, help="namespaces per cluster (default 3)")
    parser.add_argument("--pods", type=int, help="pods per namespace (default 4)")
    parser.add_argument("--nodes", type=int, help="nodes per cluster (default 3)")
    parser.add_argument("--start", type=int, help=f"Unix time the generated history starts (default {DEFAULT_START})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=9003, help="port to bind (default 9003)")
    parser.add_argument("--write-spec", type=Path, help="also write the estate's JSON spec to this file")
    return parser


def _estate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Estate:
    given = [name for name in _GENERATION if getattr(args, name) is not None]
    if args.spec is not None:
        if given:
            parser.error(f"--spec excludes generation options (got --{', --'.join(given)})")
        try:
            return from_json(args.spec.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"cannot load --spec {args.spec}: {exc}")
    options = {name: getattr(args, name) if name in given else default for name, default in _GENERATION.items()}
    try:
        return generate_estate(options["seed"], clusters=options["clusters"],
                               namespaces_per_cluster=options["namespaces"], pods_per_namespace=options["pods"],
                               nodes_per_cluster=options["nodes"], start=options["start"])
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, build the estate, and serve it until interrupted."""
    parser = _parser()
    args = parser.parse_args(argv)
    estate = _estate(parser, args)
    names = [c.name for c in estate.clusters]
    if args.cluster not in names:
        parser.error(f"--cluster {args.cluster!r} is not in the estate; its clusters: {', '.join(names)}")
    if args.write_spec is not None:
        try:
            args.write_spec.write_text(to_json(estate))
        except OSError as exc:
            parser.error(f"cannot write --write-spec {args.write_spec}: {exc}")
    app = create_app(estate, args.cluster)
    # The estate lives as long as the process: keep it out of the collector's scans, which slow large answers.
    gc.freeze()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    pods = sum(len(ns.pods) for c in estate.clusters for ns in c.namespaces)
    log.info("serving cluster %s of estate seed=%d (%d clusters, %d pods) on http://%s:%d",
             args.cluster, estate.seed, len(names), pods, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
