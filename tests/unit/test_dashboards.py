"""The Grafana dashboards of roles/grafana/files/dashboards, without Grafana and without a network: their shape
(uids, titles, the datasource variable, a query in every panel), valid PromQL (promtool), and metric names that
exist. A metric name counts as existing when a recording rule of the collection produces it, or when it is named
by what was checked against the packaged software: the alert rules' expressions, the registration probe's
program, the metric table of docs/alerts.md and the one of roles/grafana/README.md (dashboards-only metrics).

tests/lab/dashboards.py is the module under test (panel_queries, check_queries); it also asks the lab's
Prometheus every query. check_queries is tested here against a fake Prometheus on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "lab"))

import dashboards  # noqa: E402
from fakes import load_program  # noqa: E402

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.prometheus import parse  # noqa: E402

RULES = ROOT / "roles" / "prometheus" / "files" / "rules" / "mlflow_ha.rules.yml"
PROBE = ROOT / "roles" / "registration_probe" / "files" / "registration_probe.py"
ALERTS_DOC = ROOT / "docs" / "alerts.md"
GRAFANA_README = ROOT / "roles" / "grafana" / "README.md"
PROMETHEUS_DEFAULTS = ROOT / "roles" / "prometheus" / "defaults" / "main.yml"
HAPROXY_CONFIG = ROOT / "roles" / "haproxy" / "templates" / "haproxy.cfg.j2"
FILES = dashboards.dashboard_files()
EXPECTED = {
    "mlflow-ha-registration-slo.json", "mlflow-ha-postgresql.json", "mlflow-ha-storage.json",
    "mlflow-ha-load-balancer.json", "mlflow-ha-hosts.json",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CELL = re.compile(r"(?<!\\)\|")
BACKTICKED = re.compile(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)")
NEGATED = re.compile(r"\*\*no\*\*", re.IGNORECASE)
LABEL_VALUE = re.compile(r'\b(?P<label>job|proxy)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>[^"]*)"')


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows only group them)."""
    for panel in dashboards.walk_panels(dashboard.get("panels") or []):
        if panel.get("type") != "row":
            yield panel


# --- where metric names come from ---------------------------------------------------------------------------------

def rule_names() -> tuple[set[str], set[str]]:
    """(names recorded by the rules file, metric names its expressions select)."""
    recorded: set[str] = set()
    selected: set[str] = set()
    for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                recorded.add(rule["record"])
            selected |= dashboards.metric_names(rule["expr"])
    return recorded, selected - recorded


def probe_names() -> set[str]:
    """The families the probe's page has (its render() run, not its source read); a histogram's samples are
    <name>_bucket, _sum and _count."""
    text = load_program(PROBE).Metrics().render()
    return {s.name for s in parse(text)} | set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))


def table_names(markdown: Path) -> tuple[set[str], set[str]]:
    """(metric names, names said NOT to exist) of the '| source | metrics used |' tables of a Markdown file: the
    back-quoted names of the second column; those after a **No** do not exist. Names without an underscore
    (labels such as `scope`) are not metric names."""
    names: set[str] = set()
    negated: set[str] = set()
    in_table = False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in CELL.split(line.strip())[1:-1]] if line.strip().startswith("|") else []
        if len(cells) == 2 and cells[1].lower() == "metrics used":
            in_table = True
            continue
        if not cells:
            in_table = False
            continue
        if not in_table or set(cells[1]) <= {"-", " ", ":"}:
            continue
        parts = NEGATED.split(cells[1], maxsplit=1)
        names |= {n for n in BACKTICKED.findall(parts[0]) if "_" in n}
        if len(parts) > 1:
            negated |= {n for n in BACKTICKED.findall(parts[1]) if "_" in n}
    return names, negated


def known_metrics() -> tuple[set[str], set[str], set[str]]:
    """(recorded, raw, denied): what recording rules produce, raw metric names known to exist, names known not to."""
    recorded, selected = rule_names()
    raw = selected | probe_names()
    denied: set[str] = set()
    for doc in (ALERTS_DOC, GRAFANA_README):
        names, negated = table_names(doc)
        raw |= names
        denied |= negated
    return recorded, raw - denied, denied


# --- the dashboards' shape ----------------------------------------------------------------------------------------

def test_the_five_dashboards_are_there():
    assert {p.name for p in FILES} == EXPECTED


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_parses_and_has_fixed_uid_and_no_id(path):
    dashboard = load(path)
    assert dashboard.get("uid") == path.stem, f"{path.name}: uid {dashboard.get('uid')!r} should be the file's stem"
    assert len(dashboard["uid"]) <= 40, f"{path.name}: Grafana uids have at most 40 characters"
    assert dashboard.get("id") is None, f"{path.name}: a database id is baked in ({dashboard.get('id')!r})"
    assert dashboard.get("title", "").strip(), f"{path.name}: no title"
    assert "mlflow-ha" in dashboard.get("tags", []), f"{path.name}: the tag mlflow-ha links the dashboards"


def test_uids_and_titles_are_unique():
    docs = [load(p) for p in FILES]
    uids = [d["uid"] for d in docs]
    titles = [d["title"] for d in docs]
    assert len(set(uids)) == len(uids), uids
    assert len(set(titles)) == len(titles), titles


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_datasource_comes_from_the_template_variable(path):
    dashboard = load(path)
    variables = (dashboard.get("templating") or {}).get("list") or []
    sources = [v for v in variables if v.get("type") == "datasource"]
    assert [(v.get("name"), v.get("query")) for v in sources] == [("datasource", "prometheus")], (
        f"{path.name}: needs exactly one template variable 'datasource' of type datasource, query prometheus")
    for panel in panels(dashboard):
        assert panel.get("datasource") == DATASOURCE, f"{path.name} / {panel.get('title')}: panel datasource"
        for target in panel.get("targets") or []:
            assert target.get("datasource") == DATASOURCE, f"{path.name} / {panel.get('title')}: target datasource"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_panel_has_a_title_an_id_and_a_query(path):
    dashboard = load(path)
    ids = [p.get("id") for p in dashboards.walk_panels(dashboard.get("panels") or [])]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"{path.name}: panel ids {ids}"
    shown = list(panels(dashboard))
    assert shown, f"{path.name}: no panels"
    for panel in shown:
        assert (panel.get("title") or "").strip(), f"{path.name}: panel {panel.get('id')} has no title"
        assert (panel.get("description") or "").strip(), f"{path.name} / {panel['title']}: no description"
        exprs = [t.get("expr") for t in panel.get("targets") or [] if (t.get("expr") or "").strip()]
        assert exprs, f"{path.name} / {panel['title']}: no target with an expr"
        refs = [t.get("refId") for t in panel["targets"]]
        assert len(set(refs)) == len(refs), f"{path.name} / {panel['title']}: refIds {refs}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_panel_queries_finds_every_target(path):
    dashboard = load(path)
    expected = [(dashboard["title"], p["title"]) for p in panels(dashboard) for t in p["targets"] if t.get("expr")]
    queries = dashboards.panel_queries(path)
    assert [(q[0], q[1]) for q in queries] == expected
    for _dashboard, panel, expr in queries:
        assert "$" not in expr, f"{panel}: a variable is left in {expr!r}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_vector_zero_only_where_the_description_says_why(path):
    for panel in panels(load(path)):
        for target in panel["targets"]:
            if "vector(0)" in target["expr"]:
                assert "vector(0)" in panel["description"], (
                    f"{path.name} / {panel['title']}: `or vector(0)` hides a missing metric; say in the panel's "
                    "description that it stands for a failure counter that may never have incremented")
                assert re.search(r"fail|error|5\.\.|5xx", target["expr"]), (
                    f"{path.name} / {panel['title']}: `or vector(0)` is for failure/error counters only")


# --- the queries --------------------------------------------------------------------------------------------------

def test_known_metric_sources_are_parsed():
    """Guards the parsers below: each source must contribute what it obviously contains."""
    recorded, raw, denied = known_metrics()
    assert "mlflow_ha:registration_failure_ratio:rate5m" in recorded
    assert {"up", "patroni_primary", "haproxy_server_status", "node_filesystem_avail_bytes"} <= raw
    assert {"mlflow_probe_registration_duration_seconds_bucket", "mlflow_probe_up"} <= raw
    assert "mlflow_ha_vip_master" in raw
    assert {"pg_exporter_last_scrape_error", "haproxy_backend_http_requests_total", "SeaweedFS_s3_request_total"} <= raw
    assert "patroni_postgres_streaming" in denied and "patroni_postgres_streaming" not in raw
    assert "scope" not in raw


def test_every_metric_exists():
    recorded, raw, denied = known_metrics()
    unknown = []
    for dashboard, panel, expr in dashboards.all_queries():
        for name in sorted(dashboards.metric_names(expr)):
            if name in denied:
                unknown.append(f"{dashboard} / {panel}: {name} does not exist in the installed version")
            elif name not in recorded and name not in raw:
                unknown.append(f"{dashboard} / {panel}: {name} is neither recorded by a rule nor a known metric (add "
                               f"it, with where it was checked, to the table in {GRAFANA_README.relative_to(ROOT)})")
    assert not unknown, "\n".join(unknown)


def test_job_and_proxy_labels_exist():
    jobs = {j["job"] for j in yaml.safe_load(PROMETHEUS_DEFAULTS.read_text(encoding="utf-8"))["prometheus_jobs"]}
    jobs.add("prometheus")
    proxies = set(re.findall(r"^(?:listen|backend|frontend)\s+(\w+)", HAPROXY_CONFIG.read_text(encoding="utf-8"),
                             re.MULTILINE))
    known = {"job": jobs, "proxy": proxies}
    wrong = []
    for dashboard, panel, expr in dashboards.all_queries():
        for m in LABEL_VALUE.finditer(expr):
            label, op, value = m.group("label"), m.group("op"), m.group("value")
            values = set(value.split("|")) if op in ("=~", "!~") else {value}
            if not values <= known[label]:
                wrong.append(f"{dashboard} / {panel}: {label}{op}\"{value}\" is none of {sorted(known[label])}")
    assert not wrong, "\n".join(wrong)


def test_metric_names_parser():
    assert dashboards.metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="x"}[5m]))) / on (instance) group_left () b'
        ' or vector(0) unless c offset 5m > bool 2e3') == {"a_bucket", "b", "c"}
    assert dashboards.metric_names('label_replace(up, "x", "$1", "instance", "(.*)")') == {"up"}
    assert dashboards.metric_names("mlflow_ha:x:rate5m / 0.001") == {"mlflow_ha:x:rate5m"}


def test_queries_are_valid_promql(tmp_path):
    """promtool parses every query (as a recording rule): the unit tests' promtool, as in test_alert_rules.py."""
    promtool = Path(os.environ.get("PROMTOOL") or ROOT / ".cache" / "bin" / "promtool")
    if not (promtool.is_file() and os.access(promtool, os.X_OK)):
        pytest.fail(f"promtool not found at {promtool}: run `bash tools/promtool.sh` first, or set PROMTOOL",
                    pytrace=False)
    queries = dashboards.all_queries()
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard_query_{i}", "expr": expr} for i, (_dashboard, _panel, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    proc = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    if proc.returncode != 0:
        where = "\n".join(f"dashboard_query_{i}: {d} / {p}: {e}" for i, (d, p, e) in enumerate(queries))
        pytest.fail(f"promtool check rules:\n{proc.stdout}{proc.stderr}\n{where}", pytrace=False)


# --- panel_queries on nested rows, check_queries against a fake Prometheus --------------------------------------

def test_panel_queries_walks_collapsed_rows_and_substitutes_variables(tmp_path):
    dashboard = {
        "title": "T",
        "templating": {"list": [{"name": "ds", "type": "datasource", "query": "prometheus"},
                                {"name": "job", "type": "custom", "current": {"value": "node"}}]},
        "panels": [
            {"type": "timeseries", "title": "top", "targets": [{"refId": "A", "expr": "rate(x[$__rate_interval])"}]},
            {"type": "row", "title": "r", "collapsed": True, "panels": [
                {"type": "stat", "title": "inner", "targets": [
                    {"refId": "A", "expr": 'up{job="$job"} * ${__range_s}'},
                    {"refId": "B", "expr": "hidden", "hide": True},
                    {"refId": "C", "expr": "  "}]}]},
            {"type": "text", "title": "no targets"},
        ],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(dashboard), encoding="utf-8")
    assert dashboards.panel_queries(path) == [
        ("T", "top", "rate(x[1m])"),
        ("T", "inner", 'up{job="node"} * 3600'),
    ]
    assert dashboards.substitute("$__interval $ds ${ds:raw} $unknown [$__range]", {**dashboards.BUILTINS, "ds": "p"}) \
        == "1m p p $unknown [1h]"


class FakePrometheus(BaseHTTPRequestHandler):
    """/api/v1/query: 'bad' is a parse error (400), 'empty' has no series, 'scalar' a scalar, anything else one
    series."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query).get("query", [""])[0]
        FakePrometheus.seen.append(query)
        if parts.path != "/api/v1/query":
            self._send(404, {"status": "error", "errorType": "not_found", "error": "no such path"})
        elif query.startswith("bad"):
            self._send(400, {"status": "error", "errorType": "bad_data",
                             "error": 'invalid parameter "query": 1:4: parse error: unexpected end of input'})
        elif query == "empty":
            self._send(200, {"status": "success", "data": {"resultType": "vector", "result": []}})
        elif query == "scalar":
            self._send(200, {"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}})
        else:
            self._send(200, {"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {"__name__": query}, "value": [1, "1"]}]}})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakePrometheus.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_check_queries_reports_errors_and_empty_results(fake_prometheus):
    queries = [
        ("D", "fine", 'up{job="node"}'),
        ("D", "broken", "bad(("),
        ("D", "nothing", "empty"),
        ("E", "a scalar", "scalar"),
    ]
    problems = dashboards.check_queries(fake_prometheus, queries)
    assert FakePrometheus.seen == ['up{job="node"}', "bad((", "empty", "scalar"]
    assert len(problems) == 2, problems
    assert problems[0].startswith("D / broken: query errors: bad_data: ")
    assert "parse error" in problems[0]
    assert problems[1] == "D / nothing: 'empty' returned no series"


def test_check_queries_says_when_prometheus_cannot_be_reached():
    with ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus) as closed:
        port = closed.server_address[1]
    problems = dashboards.check_queries(f"http://127.0.0.1:{port}", [("D", "p", "up")], timeout=2)
    assert len(problems) == 1
    assert problems[0].startswith("D / p: query failed: ")
    assert f"127.0.0.1:{port}" in problems[0]
