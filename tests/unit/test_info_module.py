"""The adapter of the *_info modules (module_utils/info_module.py): common options, check mode, one way to end."""

from __future__ import annotations

import pytest

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.info_module import run_info_module


class Ended(Exception):
    pass


class FakeModule:
    """Records how it was built and how it ended (fail_json / exit_json end a real module too)."""

    last: "FakeModule | None" = None

    def __init__(self, argument_spec, **kwargs):
        self.argument_spec = argument_spec
        self.kwargs = kwargs
        self.params = {"endpoints": ["http://a"], "wait_timeout": 0}
        self.ended: tuple = ()
        FakeModule.last = self

    def fail_json(self, **facts):
        self.ended = ("fail", facts)
        raise Ended()

    def exit_json(self, **facts):
        self.ended = ("exit", facts)
        raise Ended()


def run(work, **kwargs) -> FakeModule:
    with pytest.raises(Ended):
        run_info_module(FakeModule, {"endpoints": {"type": "list"}}, work, **kwargs)
    return FakeModule.last


def test_common_options_and_check_mode():
    module = run(lambda params: ({"changed": False}, None), required_together=[("username", "password")])
    assert {"endpoints", "ca_path", "client_cert", "client_key", "validate_certs", "wait_timeout",
            "poll_interval"} <= set(module.argument_spec)
    assert module.kwargs["supports_check_mode"] is True
    assert module.kwargs["required_by"] == {"client_key": "client_cert"}
    assert module.kwargs["required_together"] == [("username", "password")]


def test_a_failure_sentence_fails_the_task_with_the_facts():
    module = run(lambda params: ({"changed": False, "problems": ["x is down"]}, "cluster is not healthy: x is down"))
    assert module.ended == ("fail", {"msg": "cluster is not healthy: x is down", "changed": False,
                                     "problems": ["x is down"]})


def test_no_failure_exits_with_the_facts():
    module = run(lambda params: ({"changed": False, "leader": "a"}, None))
    assert module.ended == ("exit", {"changed": False, "leader": "a"})
