"""The host_address and group_addresses filters: the override first, else the gathered default address; a clear
error when neither is known."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.mlops.mlflow_ha.plugins.filter.addresses import FilterModule, group_addresses, host_address
from ansible_collections.mlops.mlflow_ha.plugins.filter.url_host import url_host


def facts(ipv4: str | None = None, ipv6: str | None = None) -> dict:
    out: dict = {}
    if ipv4:
        out["default_ipv4"] = {"address": ipv4, "interface": "eth0"}
    if ipv6:
        out["default_ipv6"] = {"address": ipv6, "interface": "eth0"}
    return {"ansible_facts": out}


HOSTVARS = {
    "pg1": facts("10.0.0.11"),
    "pg2": {**facts("10.0.0.12"), "patroni_address": "192.168.5.12"},
    "pg3": {**facts("10.0.0.13"), "patroni_address": ""},
    "v6": facts(ipv6="fd00::5"),
    "both": {**facts("10.0.0.7", "fd00::7"), "_patroni_advertised_address": "10.1.0.7", "patroni_address": "10.2.0.7"},
    "bare": {"ansible_facts": {}},
    "nofacts": {},
}


def test_override_wins_over_the_fact():
    assert host_address("pg2", HOSTVARS, "patroni_address") == "192.168.5.12"


def test_fact_when_no_override():
    assert host_address("pg1", HOSTVARS, "patroni_address") == "10.0.0.11"
    assert host_address("pg1", HOSTVARS) == "10.0.0.11"


def test_an_empty_override_counts_as_unset():
    assert host_address("pg3", HOSTVARS, "patroni_address") == "10.0.0.13"


def test_a_list_of_variables_is_tried_in_order():
    assert host_address("both", HOSTVARS, ["_patroni_advertised_address", "patroni_address"]) == "10.1.0.7"
    assert host_address("pg2", HOSTVARS, ["_patroni_advertised_address", "patroni_address"]) == "192.168.5.12"


def test_another_role_s_override_is_ignored():
    assert host_address("pg2", HOSTVARS, "etcd_address") == "10.0.0.12"


def test_ipv4_before_ipv6_and_ipv6_when_there_is_no_ipv4():
    assert host_address("both", HOSTVARS) == "10.0.0.7"
    assert host_address("v6", HOSTVARS, "patroni_address") == "fd00::5"
    assert url_host(host_address("v6", HOSTVARS, "patroni_address")) == "[fd00::5]"


def test_an_ipv6_override_comes_back_as_it_is():
    hostvars = {"pg1": {**facts("10.0.0.11"), "patroni_address": "fd00::11"}}
    assert host_address("pg1", hostvars, "patroni_address") == "fd00::11"
    members = group_addresses(["pg1"], hostvars, "patroni_address")
    assert [url_host(m["address"]) for m in members] == ["[fd00::11]"]


@pytest.mark.parametrize("host", ["bare", "nofacts"])
def test_missing_fact_names_the_host_and_the_variable(host):
    with pytest.raises(AnsibleFilterError) as err:
        host_address(host, HOSTVARS, "patroni_address")
    message = str(err.value)
    assert "no address is known for %s" % host in message
    assert "set patroni_address for %s" % host in message
    assert "gather its facts" in message


def test_missing_fact_names_the_public_variable_not_the_published_fact():
    with pytest.raises(AnsibleFilterError, match="set etcd_address for bare"):
        host_address("bare", HOSTVARS, ["_etcd_advertised_address", "etcd_address"])


def test_missing_fact_without_override_variable_says_to_gather_facts():
    with pytest.raises(AnsibleFilterError, match=r"no address is known for bare.*gather its facts first"):
        host_address("bare", HOSTVARS)


def test_default_instead_of_failing():
    assert host_address("bare", HOSTVARS, "patroni_address", default="") == ""
    assert host_address("pg1", HOSTVARS, "patroni_address", default="") == "10.0.0.11"


def test_unknown_host_is_an_error():
    with pytest.raises(AnsibleFilterError, match="'pg9' is not a host of the inventory"):
        host_address("pg9", HOSTVARS)


def test_group_in_the_order_given_with_overrides():
    assert group_addresses(["pg3", "pg1", "pg2"], HOSTVARS, "patroni_address") == [
        {"name": "pg3", "address": "10.0.0.13"},
        {"name": "pg1", "address": "10.0.0.11"},
        {"name": "pg2", "address": "192.168.5.12"},
    ]


def test_group_fails_on_a_member_without_address():
    expected = r"group_addresses: no address is known for nofacts.*set seaweedfs_address for nofacts"
    with pytest.raises(AnsibleFilterError, match=expected):
        group_addresses(["pg1", "nofacts"], HOSTVARS, "seaweedfs_address")


def test_group_can_skip_members_without_address():
    assert group_addresses(["pg1", "bare", "v6"], HOSTVARS, skip_missing=True) == [
        {"name": "pg1", "address": "10.0.0.11"},
        {"name": "v6", "address": "fd00::5"},
    ]


def test_group_of_nobody():
    assert group_addresses([], HOSTVARS) == []
    assert group_addresses(None, HOSTVARS) == []


def test_group_name_instead_of_its_members_is_a_clear_error():
    with pytest.raises(AnsibleFilterError, match=r"groups\['postgres'\]"):
        group_addresses("postgres", HOSTVARS)


def test_both_filters_are_registered():
    assert set(FilterModule().filters()) == {"host_address", "group_addresses"}
