"""The Prometheus text writer (plugins/module_utils/exposition.py), read back with the collection's own parser,
and how the programs that use it find it on their hosts."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.mlops.mlflow_ha.plugins.module_utils.exposition import (
    Exposition,
    escape_help,
    escape_label_value,
    format_labels,
    format_value,
)
from ansible_collections.mlops.mlflow_ha.plugins.module_utils.prometheus import parse

ROOT = Path(__file__).resolve().parents[2]
WRITER = ROOT / "plugins" / "module_utils" / "exposition.py"
# (role, task file, program): the programs that import the writer from beside them.
PROGRAMS = (
    ("pgbouncer_exporter", "install.yml", "pgbouncer_exporter.py"),
    ("seaweedfs", "fence.yml", "storage_fence.py"),
)
# Other module_utils a program imports from beside it (the role copies them the same way).
HELPERS = {"pgbouncer_exporter.py": ["web_auth.py"]}


def test_label_values_escape_backslash_quote_and_newline():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_label_value(3) == "3"
    assert format_labels([("db", 'x"y'), ("user", "u")]) == '{db="x\\"y",user="u"}'
    assert format_labels([]) == ""


def test_help_escapes_backslash_and_newline_but_not_quotes():
    assert escape_help('one\\two\n"three"') == 'one\\\\two\\n"three"'


@pytest.mark.parametrize(("value", "whole", "text"), [
    (3, False, "3.0"), (3, True, "3"), (0.25, True, "0.25"), (1e-6, False, "1e-06"), (-2.0, True, "-2"),
    (2 ** 53, True, "9007199254740992.0"), (1_700_000_000.5, True, "1700000000.5"),
    (math.inf, False, "+Inf"), (-math.inf, True, "-Inf"), (math.nan, True, "NaN"),
])
def test_values(value, whole, text):
    assert format_value(value, whole) == text


def test_families_keep_the_order_of_their_first_sample_and_one_help_and_type_each():
    page = Exposition()
    page.add("b_total", "counter", "B.", 1, [("x", "1")])
    page.add("a", "gauge", "A.", 2)
    page.add("b_total", "counter", "a later HELP is ignored", 3, [("x", "2")])
    assert page.render() == (
        "# HELP b_total B.\n# TYPE b_total counter\n"
        'b_total{x="1"} 1.0\nb_total{x="2"} 3.0\n'
        "# HELP a A.\n# TYPE a gauge\na 2.0\n")


def test_a_declared_family_without_samples_still_has_help_and_type():
    page = Exposition(whole=True)
    page.declare("fenced", "gauge", "Fenced peers.")
    assert page.render() == "# HELP fenced Fenced peers.\n# TYPE fenced gauge\n"
    assert Exposition().render() == "\n"


def test_a_family_keeps_its_type_and_types_are_prometheus_types():
    page = Exposition()
    page.add("x", "gauge", "X.", 1)
    with pytest.raises(ValueError, match="metric x is a gauge, not a counter"):
        page.add("x", "counter", "X.", 1)
    with pytest.raises(ValueError, match="type 'count' is none of counter"):
        page.add("y", "count", "Y.", 1)


def test_histogram_puts_le_last_and_ends_with_inf_sum_and_count():
    page = Exposition(whole=True)
    page.histogram("d_seconds", "D.", [(0.5, 1), (1, 2)], 1.75, 3, [("job", "p")])
    assert page.render().splitlines()[2:] == [
        'd_seconds_bucket{job="p",le="0.5"} 1', 'd_seconds_bucket{job="p",le="1.0"} 2',
        'd_seconds_bucket{job="p",le="+Inf"} 3', 'd_seconds_sum{job="p"} 1.75', 'd_seconds_count{job="p"} 3']


def test_what_it_writes_the_collections_parser_reads_back():
    page = Exposition()
    labels = [("database", 'we"ird\\db\nx'), ("user", "u")]
    page.add("g", "gauge", "Odd\\help\ntext.", 0.1, labels)
    page.add("g", "gauge", "Odd\\help\ntext.", math.inf, [("database", "plain"), ("user", "")])
    page.histogram("h", "H.", [(0.1, 0), (1, 4)], 2.5, 5)
    samples = {(s.name, s.labels): s.value for s in parse(page.render())}
    assert samples[("g", tuple(labels))] == 0.1
    assert samples[("g", (("database", "plain"), ("user", "")))] == math.inf
    assert samples[("h_bucket", (("le", "+Inf"),))] == 5
    assert samples[("h_sum", ())] == 2.5


@pytest.mark.parametrize(("role", "tasks", "program"), PROGRAMS)
def test_the_role_puts_the_writer_beside_its_program(role, tasks, program):
    """The program imports `exposition` from its own directory: the role's copy task must put it there, taken from
    the collection (relative to the role, so an installed collection works too), not from a copy in the role."""
    copies = [t for t in yaml.safe_load((ROOT / "roles" / role / "tasks" / tasks).read_text())
              if "ansible.builtin.copy" in t and program in str(t.get("loop", ""))]
    assert len(copies) == 1, "one task installs %s" % program
    items = {Path(item["src"]).name: item for item in copies[0]["loop"]}
    assert items["exposition.py"]["src"] == "{{ role_path }}/../../plugins/module_utils/exposition.py"
    program_dir = items[program]["dest"]
    assert items["exposition.py"]["dest"] == "{{ %s | dirname }}/exposition.py" % program_dir.strip("{} ")
    for helper in HELPERS.get(program, []):
        assert items[helper]["src"] == "{{ role_path }}/../../plugins/module_utils/%s" % helper
        assert items[helper]["dest"] == "{{ %s | dirname }}/%s" % (program_dir.strip("{} "), helper)
    assert not (ROOT / "roles" / role / "files" / "exposition.py").exists()


@pytest.mark.parametrize(("role", "program"), [(entry[0], entry[2]) for entry in PROGRAMS])
def test_the_program_runs_from_a_directory_with_only_the_writer_beside_it(tmp_path, role, program):
    """As on the host: the program and exposition.py (and its other helpers) in one directory, no collection, no
    site-packages."""
    (tmp_path / program).write_bytes((ROOT / "roles" / role / "files" / program).read_bytes())
    (tmp_path / "exposition.py").write_bytes(WRITER.read_bytes())
    for helper in HELPERS.get(program, []):
        (tmp_path / helper).write_bytes((WRITER.parent / helper).read_bytes())
    code = ("import sys; sys.path.insert(0, %r); import %s as p; import exposition; "
            "print(p.Exposition is exposition.Exposition, exposition.__file__)" % (str(tmp_path), Path(program).stem))
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(tmp_path / "exposition.py")]
