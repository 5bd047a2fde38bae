"""The apt_packages action plugin's decisions: when dpkg's answer is enough, and what counts as installed."""

from __future__ import annotations

from shared_checks import assert_documented_as_specified

from ansible_collections.mlops.mlflow_ha.plugins.action.apt_packages import (
    ARGUMENT_SPEC,
    missing_packages,
    shortcut_applies,
)
from ansible_collections.mlops.mlflow_ha.plugins.modules.apt_packages import DOCUMENTATION


def args(**overrides):
    return {"name": ["haproxy"], "state": "present", **overrides}


def test_only_present_plain_names_skip_apt():
    assert shortcut_applies(args())
    assert shortcut_applies(args(name=["postgresql-15", "python3-psycopg2", "libc++1"]))
    assert not shortcut_applies(args(state="latest"))
    assert not shortcut_applies(args(state="absent"))
    assert not shortcut_applies(args(name=["haproxy=2.6.12-1"]))
    assert not shortcut_applies(args(name=["haproxy/bookworm-backports"]))
    assert not shortcut_applies(args(name=["prometheus-*"]))
    assert not shortcut_applies(args(name=[]))


def test_installed_means_status_ii_for_every_name():
    output = "haproxy ii \nkeepalived rc \npython3-venv:amd64 ii \nnftables iU \n"
    assert missing_packages(["haproxy", "python3-venv"], output) == []
    # removed with its configuration kept, or unpacked but not configured: apt must run
    assert missing_packages(["haproxy", "keepalived", "nftables"], output) == ["keepalived", "nftables"]
    # dpkg-query prints nothing on stdout for a package it never heard of
    assert missing_packages(["etcd-server"], "") == ["etcd-server"]


def test_the_documentation_module_describes_the_plugins_options():
    assert_documented_as_specified(DOCUMENTATION, ARGUMENT_SPEC)
