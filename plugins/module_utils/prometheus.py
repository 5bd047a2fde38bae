# Copyright: mlflow-ha developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parse the Prometheus text exposition format (version 0.0.4) into samples."""

from __future__ import absolute_import, annotations, division, print_function

__metaclass__ = type

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple


class ParseError(ValueError):
    pass


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Tuple[Tuple[str, str], ...]
    value: float

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default

    def to_dict(self) -> Dict[str, object]:
        value = self.value
        # JSON has no NaN or infinities: report them as strings.
        shown = value if math.isfinite(value) else str(value)
        return {"name": self.name, "labels": dict(self.labels), "value": shown}


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_labels(text: str, pos: int, lineno: int) -> Tuple[Tuple[Tuple[str, str], ...], int]:
    """Parse ``{a="x",b="y"}`` starting at ``text[pos] == '{'``; return labels and the index after '}'."""
    labels: List[Tuple[str, str]] = []
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " ,":
            pos += 1
        if pos < len(text) and text[pos] == "}":
            return tuple(labels), pos + 1
        eq = text.find("=", pos)
        if eq < 0 or eq + 1 >= len(text) or text[eq + 1] != '"':
            raise ParseError("line %d: malformed label set" % lineno)
        key = text[pos:eq].strip()
        pos = eq + 2
        value = []
        while True:
            if pos >= len(text):
                raise ParseError("line %d: unterminated label value" % lineno)
            ch = text[pos]
            if ch == "\\" and pos + 1 < len(text):
                value.append(_ESCAPES.get(text[pos + 1], "\\" + text[pos + 1]))
                pos += 2
                continue
            if ch == '"':
                pos += 1
                break
            value.append(ch)
            pos += 1
        labels.append((key, "".join(value)))


def _parse_value(text: str, lineno: int) -> float:
    token = text.split(maxsplit=1)[0] if text.split() else ""
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if token in special:
        return special[token]
    try:
        return float(token)
    except ValueError:
        raise ParseError("line %d: value %r is not a number" % (lineno, token)) from None


def parse(text: str) -> List[Sample]:
    """All samples in ``text``, in order. Comments (HELP/TYPE) and blank lines are skipped."""
    samples: List[Sample] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        end = 0
        while end < len(line) and line[end] not in "{ \t":
            end += 1
        name = line[:end]
        if not name:
            raise ParseError("line %d: no metric name" % lineno)
        labels: Tuple[Tuple[str, str], ...] = ()
        if end < len(line) and line[end] == "{":
            labels, end = _parse_labels(line, end, lineno)
        samples.append(Sample(name, labels, _parse_value(line[end:], lineno)))
    return samples


def family_of(name: str) -> str:
    """The family a sample belongs to: histogram/summary parts map to their base name."""
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def families(samples: List[Sample]) -> Dict[str, List[Sample]]:
    """Samples grouped by metric name; a histogram's or summary's parts are also listed under the base name."""
    out: Dict[str, List[Sample]] = {}
    for sample in samples:
        out.setdefault(sample.name, []).append(sample)
        base = family_of(sample.name)
        if base != sample.name:
            out.setdefault(base, []).append(sample)
    return out
