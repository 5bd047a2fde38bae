"""The exposition-format parser and the prometheus_scrape module's logic, with no network."""

from __future__ import annotations

import math

import pytest
from fakes import FakeTransport, refused
from role_vars import render

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.http_client import HttpClientError, Response
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.prometheus import ParseError, families, parse
from ansible_collections.mlops.mlflow_ha.plugins.modules import prometheus_scrape

PAGE = """\
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.25
node_systemd_unit_state{name="patroni.service",state="active",type="simple"} 1
node_systemd_unit_state{name="a \\"quoted\\" unit\\\\x",state="failed"} 0
haproxy_backend_status{proxy="pg_primary", state="UP"} 1 1700000000000
http_request_duration_seconds_bucket{le="+Inf"} 12
http_request_duration_seconds_sum 3.5
http_request_duration_seconds_count 12
weird_value NaN
"""


def test_parse_samples_labels_and_values():
    samples = parse(PAGE)
    assert [s.name for s in samples][:3] == ["node_load1", "node_systemd_unit_state", "node_systemd_unit_state"]
    assert samples[0].value == 0.25 and samples[0].labels == ()
    assert samples[1].label("name") == "patroni.service"
    assert samples[2].label("name") == 'a "quoted" unit\\x'
    assert samples[3].label("state") == "UP" and samples[3].value == 1.0
    assert math.isnan(samples[-1].value)


def test_histogram_parts_listed_under_family():
    fams = families(parse(PAGE))
    assert len(fams["http_request_duration_seconds"]) == 3
    assert "http_request_duration_seconds_count" in fams


def test_nan_is_reported_as_string():
    assert parse("x NaN")[0].to_dict() == {"name": "x", "labels": {}, "value": "nan"}


@pytest.mark.parametrize("bad", ['x{a="1" 2', "x{a=1} 2", "x abc", '{a="b"} 1'])
def test_parse_errors_name_the_line(bad):
    with pytest.raises(ParseError, match="line 1"):
        parse(bad)


def params(**kw):
    base = dict(endpoints=["http://a:9100", "http://b:9100"], path="/metrics", component="node_exporter on pg1",
                required_families=["node_load1"], select=["node_systemd_unit_state"], ca_path=None,
                validate_certs=True, timeout=5.0, deadline=30.0, max_attempts=4)
    base.update(kw)
    return base


def test_scrape_fails_over_and_selects(clock):
    transport = FakeTransport(clock, {"http://a:9100": [refused()],
                                      "http://b:9100": [Response(200, PAGE.encode(), {}, "http://b:9100/metrics")]})
    result = prometheus_scrape.scrape(params(), transport=transport)
    assert result["endpoint"] == "http://b:9100"
    assert result["missing"] == []
    assert result["sample_count"] == 8
    assert result["samples"][0]["labels"]["name"] == "patroni.service"


def test_scrape_reports_missing_families(clock):
    transport = FakeTransport(clock, {"http://a:9100": [Response(200, b"node_load1 1\n", {}, "http://a:9100/metrics")]})
    result = prometheus_scrape.scrape(params(required_families=["node_load1", "node_systemd_unit_state"]),
                                      transport=transport)
    assert result["missing"] == ["node_systemd_unit_state"]


def test_scrape_error_names_component(clock):
    transport = FakeTransport(clock, {"http://a:9100": [refused()], "http://b:9100": [refused()]})
    with pytest.raises(HttpClientError, match=r"^node_exporter on pg1: GET /metrics failed"):
        prometheus_scrape.scrape(params(max_attempts=2), transport=transport)


def test_scrape_logs_in_with_basic_auth_when_given_a_user(clock):
    transport = FakeTransport(clock, {"http://a:5000": [Response(200, PAGE.encode(), {}, "http://a:5000/metrics")]})
    prometheus_scrape.scrape(params(endpoints=["http://a:5000"], username="admin", password="s3cret-pass"),
                             transport=transport)
    assert transport.headers[-1]["Authorization"] == "Basic YWRtaW46czNjcmV0LXBhc3M="
    transport = FakeTransport(clock, {"http://a:5000": [Response(200, PAGE.encode(), {}, "http://a:5000/metrics")]})
    prometheus_scrape.scrape(params(endpoints=["http://a:5000"]), transport=transport)
    assert "Authorization" not in transport.headers[-1]


def test_only_jobs_with_a_user_and_a_password_get_a_password_file():
    jobs = [{"job": "mlflow", "group": "mlflow", "port": 5000, "username": "admin", "password": "admin-password"},
            {"job": "node", "group": "postgres", "port": 9100},
            {"job": "auth_off", "group": "mlflow", "port": 5000, "username": "", "password": "x"},
            {"job": "no_password", "group": "postgres", "port": 9187, "username": "admin", "password": ""}]
    assert [j["job"] for j in render("prometheus", "_prometheus_login_jobs", prometheus_jobs=jobs)] == ["mlflow"]
