"""Create, list, rotate and delete Kubernetes cloud accounts (until the REST API does it).

    python scripts/accounts.py create --organization-id ORG --name NAME
    python scripts/accounts.py list [--organization-id ORG]
    python scripts/accounts.py rotate ACCOUNT_ID
    python scripts/accounts.py delete ACCOUNT_ID

Reads MONGODB_URL / MONGODB_DATABASE. `create` and `rotate` print the credentials once,
as JSON: keep the password, it is stored only as a salted hash.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys

from k8scost.settings import StoreSettings, from_env
from k8scost.stores.accounts import AccountStore
from k8scost.stores.mongo import connect


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create an account and print its credentials")
    create.add_argument("--organization-id", required=True)
    create.add_argument("--name", required=True)
    listing = commands.add_parser("list", help="list live accounts")
    listing.add_argument("--organization-id")
    for name in ("rotate", "delete"):
        commands.add_parser(name).add_argument("account_id")
    return parser


async def _run(args: argparse.Namespace) -> int:
    store = AccountStore(connect(from_env(StoreSettings)))
    await store.ensure_indexes()
    if args.command == "create":
        if not args.organization_id.strip() or not args.name.strip():
            print("error: --organization-id and --name must not be empty", file=sys.stderr)
            return 2
        account, credentials = await store.create(args.organization_id, args.name)
        print(json.dumps({**dataclasses.asdict(account), "password": credentials.password}))
    elif args.command == "list":
        for account in await store.list(args.organization_id):
            print(json.dumps(dataclasses.asdict(account)))
    elif args.command == "rotate":
        credentials = await store.rotate(args.account_id)
        if credentials is None:
            print(f"error: no live account {args.account_id!r}", file=sys.stderr)
            return 1
        print(json.dumps(dataclasses.asdict(credentials)))
    elif args.command == "delete":
        if not await store.delete(args.account_id):
            print(f"error: no live account {args.account_id!r}", file=sys.stderr)
            return 1
        print(json.dumps({"deleted": args.account_id}))
    return 0


def main() -> int:
    return asyncio.run(_run(_parser().parse_args()))


if __name__ == "__main__":
    sys.exit(main())
