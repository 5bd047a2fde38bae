"""The collection's Grafana dashboards seen as PromQL: every panel's queries, with Grafana's built-in variables
replaced by fixed values, and a check that each query answers with at least one series on a live Prometheus.

Grafana itself is not needed (it is in no package registry reachable from the build machines): the queries are
what a dashboard is worth, and they can be asked of the lab's Prometheus directly::

    python tests/lab/dashboards.py https://172.28.79.51:9090   (the lab's CA and monitoring login from inventories/lab)

Standard library only.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "roles" / "grafana" / "files" / "dashboards"

# Grafana's built-in variables, as fixed values a query can be checked with. 1m covers at least four samples at
# the lab's 10 s and the default 15 s scrape interval, which rate() over $__rate_interval needs.
BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__rate_interval_ms": "60000",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# Names of the datasource variable's value: the provisioned Prometheus datasource.
DATASOURCE_VALUE = "prometheus"

VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\$(?P<plain>\w+)")
METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Parts of a PromQL expression that hold no metric name: strings, label matchers, grouping label lists, ranges.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_DURATIONS = re.compile(r"(?<![\w:])\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![\w:])")
_NUMBERS = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)")
KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "inf", "nan", "atan2",
})

Query = tuple[str, str, str]  # (dashboard title, panel title, expr)


def dashboard_files(directory: Path = DASHBOARDS) -> list[Path]:
    """The dashboards the grafana role provisions, sorted by file name."""
    return sorted(directory.glob("*.json"))


def all_queries(directory: Path = DASHBOARDS) -> list[Query]:
    """Every panel query of every dashboard the grafana role provisions."""
    return [query for path in dashboard_files(directory) for query in panel_queries(path)]


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, depth first: a collapsed row holds its panels in its own `panels`."""
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels") or [])


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Fixed values for the dashboard's own template variables: the datasource variable's value, and the current
    value of any other variable that has one (custom, constant, interval)."""
    values: dict[str, str] = {}
    for var in (dashboard.get("templating") or {}).get("list") or []:
        name = var.get("name")
        if not name:
            continue
        if var.get("type") == "datasource":
            values[name] = DATASOURCE_VALUE
            continue
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list):
            current = "|".join(str(v) for v in current)
        if current not in (None, ""):
            values[name] = str(current)
        elif var.get("query") and var.get("type") in ("constant", "custom", "interval"):
            values[name] = str(var["query"]).split(",", maxsplit=1)[0].strip()
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """expr with $name, ${name} and ${name:format} replaced; unknown names are left as they are (Prometheus then
    says what is wrong with the query)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        return values.get(name, match.group(0))

    return VARIABLE.sub(replace, expr)


def panel_queries(path: Union[str, Path]) -> list[Query]:
    """(dashboard title, panel title, expr) for every target with an expression of every panel of the dashboard
    file, nested rows included, with Grafana's variables replaced by fixed values (BUILTINS, the datasource)."""
    dashboard = json.loads(Path(path).read_text(encoding="utf-8"))
    title = dashboard.get("title") or Path(path).stem
    values = {**BUILTINS, **variable_values(dashboard)}
    queries: list[Query] = []
    for panel in walk_panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = (target.get("expr") or "").strip()
            if expr and not target.get("hide"):
                queries.append((title, panel.get("title") or f"panel {panel.get('id')}", substitute(expr, values)))
    return queries


def metric_names(expr: str) -> set[str]:
    """Metric names (and recording rule names) an expression selects. Function names are the identifiers followed
    by '('; label names inside {...} and by/on/... (...) lists, strings, ranges and numbers are dropped first."""
    text = _STRINGS.sub(" ", expr)
    previous = None
    while previous != text:  # innermost first: a matcher or grouping list never nests, a range may hold a subquery
        previous = text
        text = _MATCHERS.sub(" ", text)
        text = _GROUPING.sub(" ", text)
        text = _RANGES.sub(" ", text)
    text = _DURATIONS.sub(" ", text)
    text = _NUMBERS.sub(" ", text)
    names: set[str] = set()
    for match in METRIC.finditer(text):
        name = match.group(0)
        rest = text[match.end():].lstrip()
        if name.lower() in KEYWORDS or rest.startswith("("):
            continue
        names.add(name)
    return names


def _describe(error: Union[urllib.error.URLError, OSError, ValueError]) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error)


def check_queries(prometheus_url: str, queries: list[Query], timeout: float = 10.0,
                  context: Optional[ssl.SSLContext] = None, headers: Optional[dict[str, str]] = None) -> list[str]:
    """Ask Prometheus (GET /api/v1/query) for each query; return one sentence per query that fails or answers
    with no series, empty when every panel would show data. ``context`` verifies an HTTPS Prometheus, ``headers``
    carry its login."""
    base = prometheus_url.rstrip("/")
    problems: list[str] = []
    for dashboard, panel, expr in queries:
        where = f"{dashboard} / {panel}"
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout,
                                        context=context) as response:
                answer = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            # Prometheus answers a bad query with 400 (or 422 for an execution error) and a JSON body.
            try:
                answer = json.loads(err.read().decode("utf-8"))
            except ValueError:
                problems.append(f"{where}: query errors: {_describe(err)} for {expr!r}")
                continue
        except (urllib.error.URLError, OSError, ValueError) as err:
            problems.append(f"{where}: query failed: {_describe(err)} asking {base} for {expr!r}")
            continue
        if answer.get("status") != "success":
            kind = answer.get("errorType") or "error"
            problems.append(f"{where}: query errors: {kind}: {answer.get('error', answer)} in {expr!r}")
            continue
        data = answer.get("data") or {}
        result = data.get("result")
        if data.get("resultType") in ("scalar", "string"):
            continue  # a single value always exists
        if not result:
            problems.append(f"{where}: {expr!r} returned no series")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} PROMETHEUS_URL (e.g. https://172.28.79.51:9090)", file=sys.stderr)
        return 2
    from labctl import Lab

    lab = Lab.load()
    token = base64.b64encode(f"{lab.monitoring_username}:{lab.monitoring_password}".encode()).decode()
    queries = all_queries()
    problems = check_queries(argv[1], queries, context=ssl.create_default_context(cafile=lab.ca_path),
                             headers={"Authorization": "Basic " + token})
    for problem in problems:
        print(problem)
    print(f"{len(queries) - len(problems)} passed, {len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
