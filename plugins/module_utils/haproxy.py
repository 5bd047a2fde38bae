# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy's stats page (``;csv``) as backends and servers: who takes traffic, and why not."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import (
    excerpt,
)


@dataclass
class HaproxyServer:
    """One server row of HAProxy's stats CSV."""

    name: str
    status: str
    check_status: str = ""
    address: str = ""
    last_change_seconds: Optional[int] = None
    last_check: str = ""

    @property
    def serving(self) -> bool:
        """Takes new connections: UP (also "UP 1/3", up and failing checks), or enabled without checks."""
        return self.status == "no check" or self.status.split(" ")[0] == "UP"

    def describe(self) -> str:
        detail = ", ".join(p for p in (self.check_status, self.last_check) if p)
        return "%s %s%s" % (self.name, self.status, " (%s)" % detail if detail else "")

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "status": self.status, "serving": self.serving, "check_status": self.check_status,
                "address": self.address, "last_change_seconds": self.last_change_seconds,
                "last_check": self.last_check}


@dataclass
class HaproxyBackend:
    name: str
    status: str = ""
    servers: List[HaproxyServer] = field(default_factory=list)

    @property
    def serving(self) -> List[HaproxyServer]:
        return [s for s in self.servers if s.serving]


def _int_or_none(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def parse_haproxy_csv(text: str) -> Dict[str, HaproxyBackend]:
    """HAProxy's ``;csv`` stats page as backends by name (listen sections count as backends), in file order.

    Raises ValueError when the text is not HAProxy's CSV (the header starts with ``# pxname,svname``)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# pxname,svname"):
        raise ValueError("not HAProxy's stats CSV (no '# pxname,svname' header): %s" % excerpt(text.encode()))
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    backends: Dict[str, HaproxyBackend] = {}
    for row in reader:
        proxy, server = row.get("pxname") or "", row.get("svname") or ""
        if not proxy or server == "FRONTEND":
            continue
        backend = backends.setdefault(proxy, HaproxyBackend(proxy))
        if server == "BACKEND":
            backend.status = row.get("status") or ""
            continue
        backend.servers.append(HaproxyServer(
            name=server, status=row.get("status") or "", check_status=(row.get("check_status") or "").strip("* "),
            address=row.get("addr") or "", last_change_seconds=_int_or_none(row.get("lastchg")),
            last_check=row.get("last_chk") or ""))
    return {k: v for k, v in backends.items() if v.status or v.servers}
