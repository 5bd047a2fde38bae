"""Expressions the roles derive in vars/main.yml, rendered by Ansible: the patroni role's restart order and the
mlflow role's server apps."""

from __future__ import annotations

from pathlib import Path

import pytest
from role_vars import render

ROOT = Path(__file__).resolve().parents[2]

# A cluster view as patroni_config / patroni_cluster_info return it (members sorted by name).
MEMBERS = [
    {"name": "pg1", "role": "replica", "pending_restart": True},
    {"name": "pg2", "role": "leader", "pending_restart": True},
    {"name": "pg3", "role": "sync_standby", "pending_restart": False},
    {"name": "pg4", "role": "replica", "pending_restart": True},
]


def names(members):
    return [m["name"] for m in members]


class TestPatroniRestartOrder:
    def test_pending_restarts_replicas_first_in_cluster_order_leader_last(self):
        order = render("patroni", "_patroni_restart_order", patroni_cluster={"members": MEMBERS})
        assert names(order) == ["pg1", "pg4", "pg2"]
        assert order[0] == MEMBERS[0], "whole members: the restart tasks read name and role"

    def test_program_restarts_take_the_stale_members_in_the_same_order(self):
        order = render("patroni", "_patroni_program_restart_order", patroni_cluster={"members": MEMBERS},
                       _patroni_program_stale=["pg2", "pg3"])
        assert names(order) == ["pg3", "pg2"]

    @pytest.mark.parametrize("cluster", [{}, {"skipped": True}, {"members": []}])
    def test_nothing_to_restart_without_a_cluster_view(self, cluster):
        assert render("patroni", "_patroni_restart_order", patroni_cluster=cluster) == []
        assert render("patroni", "_patroni_program_restart_order", patroni_cluster=cluster,
                      _patroni_program_stale=["pg1"]) == []

    def test_the_order_is_written_once(self):
        role = ROOT / "roles" / "patroni"
        texts = [p.read_text() for d in ("vars", "tasks", "handlers") for p in sorted((role / d).glob("*.yml"))]
        assert sum(t.count("'role', 'eq', 'leader'") for t in texts) == 2, "one rejectattr and one selectattr"
