# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write the Prometheus text exposition format (version 0.0.4): the one writer of the programs the roles ship.

Standard library only and importing nothing of the collection: the pgbouncer_exporter and seaweedfs roles copy
this file beside their program (which imports it as ``exposition``), the registration_probe role copies it with
the other module_utils the probe imports by their full name (docs/design-decisions.md, "One exposition writer").
Its reader is ``prometheus.py``.
"""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import math
from typing import Any, Dict, Iterable, List, Sequence, Tuple

Labels = Sequence[Tuple[str, Any]]

KINDS = ("counter", "gauge", "histogram", "summary", "untyped")


def escape_label_value(value: Any) -> str:
    """A label value as it stands between the quotes: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    """HELP text: backslash and newline escaped (a double quote stays as it is there)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_labels(labels: Labels) -> str:
    """``{a="x",b="y"}`` in the order given; an empty string for no labels."""
    if not labels:
        return ""
    return "{" + ",".join('%s="%s"' % (key, escape_label_value(value)) for key, value in labels) + "}"


def format_value(value: float, whole: bool = False) -> str:
    """A sample value: ``+Inf``, ``-Inf`` and ``NaN`` as Prometheus spells them; otherwise Python's shortest
    round-tripping repr of the float (``3.0``, ``0.25``, ``1e-06``), or with ``whole`` a whole number below 2**53
    without its decimal point (``3``)."""
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if whole and number.is_integer() and abs(number) < 2 ** 53:
        return "%d" % number
    return repr(number)


class Exposition:
    """One scrape's page: a HELP and a TYPE line per family, then its samples; families in the order of their
    first sample, samples in the order added.

    ``whole`` picks the value style for every sample of the page (see ``format_value``)."""

    def __init__(self, whole: bool = False) -> None:
        self.whole = whole
        self._families: Dict[str, Tuple[str, str, List[str]]] = {}  # name -> (kind, help, sample lines)

    def declare(self, name: str, kind: str, help_text: str) -> None:
        """The family ``name`` on the page even without a sample (its HELP and TYPE lines)."""
        self._samples(name, kind, help_text)

    def _samples(self, name: str, kind: str, help_text: str) -> List[str]:
        if kind not in KINDS:
            raise ValueError("metric %s: type %r is none of %s" % (name, kind, ", ".join(KINDS)))
        known = self._families.setdefault(name, (kind, help_text, []))
        if known[0] != kind:
            raise ValueError("metric %s is a %s, not a %s" % (name, known[0], kind))
        return known[2]

    def add(self, name: str, kind: str, help_text: str, value: float, labels: Labels = ()) -> None:
        """One sample of the family ``name`` (declared by its first sample: later HELP texts are ignored)."""
        self._samples(name, kind, help_text).append(
            "%s%s %s" % (name, format_labels(labels), format_value(value, self.whole)))

    def histogram(self, name: str, help_text: str, buckets: Iterable[Tuple[float, float]], total: float,
                  count: float, labels: Labels = ()) -> None:
        """A histogram's samples: ``buckets`` as (upper bound, cumulative count) in rising order, then the
        ``+Inf`` bucket (``count``), ``_sum`` (``total``) and ``_count``. Each bound is written as Python's repr of
        the float (``le="1.0"``)."""
        samples = self._samples(name, "histogram", help_text)
        bounds = [(repr(float(bound)), seen) for bound, seen in buckets] + [("+Inf", count)]
        samples.extend("%s_bucket%s %s" % (name, format_labels([*labels, ("le", le)]), format_value(seen, self.whole))
                       for le, seen in bounds)
        samples.append("%s_sum%s %s" % (name, format_labels(labels), format_value(total, self.whole)))
        samples.append("%s_count%s %s" % (name, format_labels(labels), format_value(count, self.whole)))

    def render(self) -> str:
        """The page, ending in a newline."""
        lines: List[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines += ["# HELP %s %s" % (name, escape_help(help_text)), "# TYPE %s %s" % (name, kind), *samples]
        return "\n".join(lines) + "\n"
