"""The url_host filter: IPv6 in brackets, everything else as it is."""

from __future__ import annotations

from ansible_collections.mlops.mlflow_ha.plugins.filter.url_host import url_host


def test_ipv6_is_bracketed_once():
    assert url_host("fd00::5") == "[fd00::5]"
    assert url_host("::") == "[::]"
    assert url_host("[fd00::5]") == "[fd00::5]"


def test_ipv4_and_names_stay_as_they_are():
    assert url_host("10.0.0.5") == "10.0.0.5"
    assert url_host("0.0.0.0") == "0.0.0.0"
    assert url_host("mon1.example.internal") == "mon1.example.internal"
    assert url_host("") == ""
