"""``mlflow-ha-client spool status | replay | drop KEY``, ``mlflow-ha-client health``, ``... metrics``.

The spool directory comes from ``--spool-dir`` or MLFLOW_HA_SPOOL_DIR; the registry (for replay and health) from
MLflow's variables, as for the official client (docs/clients.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from mlflow_ha_client.client import Registry
from mlflow_ha_client.errors import RegistryError
from mlflow_ha_client.health import registry_health
from mlflow_ha_client.spool import Spool


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlflow-ha-client",
        description="The local spool of mlflow_ha_client (status, replay, drop) and the registry's health from the "
                    "load balancer's view.")
    parser.add_argument("--spool-dir", default=os.environ.get("MLFLOW_HA_SPOOL_DIR"),
                        help="the spool directory (default: $MLFLOW_HA_SPOOL_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)
    spool = commands.add_parser("spool", help="the local spool")
    actions = spool.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="entries by state, oldest age, counters, entries not done (JSON)")
    replay = actions.add_parser("replay", help="send the pending entries to the registry once each")
    replay.add_argument("--deadline", type=float, default=60.0, help="seconds per entry (default 60)")
    drop = actions.add_parser("drop", help="remove an entry and its files without sending it")
    drop.add_argument("key")
    commands.add_parser("health", help="the registry's state from the load balancer's view (JSON)")
    commands.add_parser("metrics", help="the spool's metrics in the Prometheus text format")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "health":
        return _health(args)
    if not args.spool_dir:
        print("mlflow-ha-client: no spool directory: give --spool-dir or set MLFLOW_HA_SPOOL_DIR", file=sys.stderr)
        return 2
    spool = Spool(args.spool_dir)
    if args.command == "metrics":
        sys.stdout.write(spool.metrics())
        return 0
    return {"status": _status, "drop": _drop, "replay": _replay}[args.action](args, spool)


def _health(args: argparse.Namespace) -> int:
    try:
        state = registry_health(Registry.from_env(spool_dir=args.spool_dir))
    except ValueError as err:
        print("mlflow-ha-client: %s" % err, file=sys.stderr)
        return 2
    print(json.dumps(state, indent=1, sort_keys=True))
    return 0 if state["up"] else 1


def _status(_args: argparse.Namespace, spool: Spool) -> int:
    print(json.dumps(spool.status(), indent=1, sort_keys=True))
    return 0


def _drop(args: argparse.Namespace, spool: Spool) -> int:
    if spool.drop(args.key):
        print("dropped %s" % args.key)
        return 0
    print("mlflow-ha-client: no spool entry with key %s" % args.key, file=sys.stderr)
    return 1


def _replay(args: argparse.Namespace, spool: Spool) -> int:
    """Exit 0 when every pending entry reached the registry, 1 when one could not (still pending, refused or
    corrupt), 2 for a configuration error, 3 when another replay holds the spool."""
    try:
        registry = Registry.from_env(spool=spool)
        report = registry.replay(deadline=args.deadline)
    except (ValueError, RegistryError) as err:
        print("mlflow-ha-client: %s" % err, file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=1, sort_keys=True))
    if report.busy:
        print("mlflow-ha-client: another replay holds the spool; nothing done", file=sys.stderr)
        return 3
    return 1 if report.stopped or report.failed or report.corrupt else 0
