"""A per-process metrics registry and the Prometheus text exposition (format 0.0.4).

Theory of operation
-------------------
Each worker process records into its own :class:`Registry`: a metric is a plain dict from
a tuple of label values to a number (counter, gauge) or to a list of per-bucket counts
plus the sum (histogram).  Recording is one dict lookup and one in-place add: no lock
(a worker is one thread), no syscall, no allocation once the series exists.

APISIX keeps its metrics in an nginx shared dict of fixed size; when it is full, new
series are silently dropped (and the page says nothing about it).  Here every metric
has a cap on its number of series (``max_series``): once reached, a *new* label set is
folded into one overflow series (its label values replaced by ``__overflow__``, except
the structural labels named in ``keep_on_overflow``, such as ``code`` or ``type``), and
``<prefix>metric_overflow_total{metric="..."}`` counts the updates folded that way.
Totals are therefore never lost, only their breakdown.

The gateway's page is the sum over all workers: the supervisor asks each worker for
:meth:`Registry.collect` (plain, picklable :class:`Family` objects), adds them with
:func:`merge` (counters and histograms add up; gauges follow their ``aggregate`` mode)
and writes the page with :func:`render`.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "Family", "merge", "render", "REGISTRY",
           "DEFAULT_MAX_SERIES", "OVERFLOW", "OVERFLOW_METRIC", "CONTENT_TYPE"]

Labels = tuple[str, ...]
MetricType = Literal["counter", "gauge", "histogram"]
# How a gauge adds up over workers: "sum" (an instantaneous count, e.g. open connections),
# "max" (a value every worker reports alike, e.g. node info), "total" (a cumulative count
# kept in a gauge as APISIX does for http_requests_total: summed, and kept when a worker exits).
Aggregate = Literal["sum", "max", "total"]

DEFAULT_MAX_SERIES = 10_000
OVERFLOW = "__overflow__"
OVERFLOW_METRIC = "metric_overflow_total"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(slots=True)
class Family:
    """One metric's samples, as plain data (what workers send to the supervisor).

    ``series`` maps label values to a float (counter, gauge) or, for a histogram, to a
    list of ``len(buckets) + 2`` floats: the count of each bucket (not cumulative), the
    count of the ``+Inf`` bucket, then the sum of the observed values.
    """

    name: str
    type: MetricType
    help: str
    labelnames: Labels
    series: dict[Labels, Any] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    aggregate: Aggregate = "sum"

    def same_shape(self, other: Family) -> bool:
        return (self.type == other.type and self.labelnames == other.labelnames and self.buckets == other.buckets)

    def copy(self) -> Family:
        if self.type == "histogram":
            series: dict[Labels, Any] = {k: list(v) for k, v in self.series.items()}
        else:
            series = dict(self.series)
        return Family(self.name, self.type, self.help, self.labelnames, series, self.buckets, self.aggregate)


class _Metric:
    __slots__ = ("name", "help", "labelnames", "series", "max_series", "keep", "overflowed")
    type: MetricType = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str], *, max_series: int,
                 keep_on_overflow: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for ln in labelnames:
            if not _LABEL_RE.match(ln) or ln.startswith("__"):
                raise ValueError(f"metric {name}: invalid label name {ln!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"metric {name}: duplicate label names")
        unknown = set(keep_on_overflow) - set(labelnames)
        if unknown:
            raise ValueError(f"metric {name}: keep_on_overflow names unknown labels {sorted(unknown)}")
        self.name = name
        self.help = help
        self.labelnames: Labels = tuple(labelnames)
        self.series: dict[Labels, Any] = {}
        self.max_series = max(1, max_series)
        self.keep = frozenset(i for i, ln in enumerate(labelnames) if ln in keep_on_overflow)
        self.overflowed = 0

    def _key(self, labels: Sequence[Any]) -> Labels:
        """The series a label set not seen yet goes to (slow path: a new series, or the cap)."""
        if len(labels) != len(self.labelnames):
            raise ValueError(f"metric {self.name}: {len(labels)} label values for {len(self.labelnames)} labels")
        key = tuple(v if type(v) is str else ("" if v is None else str(v)) for v in labels)
        if key in self.series:
            return key
        if len(self.series) >= self.max_series:
            self.overflowed += 1
            key = tuple(v if i in self.keep else OVERFLOW for i, v in enumerate(key))
        return key

    def own_row(self, labels: Labels) -> list[float] | None:
        """The mutable series of ``labels`` (a histogram's row, a counter's one-element cell) when
        it exists under exactly these labels, not the overflow series; else None (gauges too)."""
        row = self.series.get(labels)
        return row if type(row) is list else None

    def family(self, aggregate: Aggregate = "sum") -> Family:
        return Family(self.name, self.type, self.help, self.labelnames, dict(self.series), (), aggregate)


class Counter(_Metric):
    """``series`` maps a label set to a one-element list (a cell), so a caller that updates
    the same label set on every request can keep the cell (:meth:`own_row`: ``cell[0] += n``)."""

    __slots__ = ()
    type: MetricType = "counter"

    def inc(self, labels: Labels = (), value: float = 1.0) -> None:
        try:
            self.series[labels][0] += value
        except KeyError:
            key = self._key(labels)
            s = self.series
            cell = s.get(key)
            if cell is None:
                cell = s[key] = [0.0]
            cell[0] += value

    def value(self, labels: Labels = ()) -> float:
        """The count of a label set (0.0 when it has no series)."""
        cell = self.series.get(labels)
        return float(cell[0]) if cell is not None else 0.0

    def family(self, aggregate: Aggregate = "sum") -> Family:
        return Family(self.name, "counter", self.help, self.labelnames,
                      {k: c[0] for k, c in self.series.items()}, (), aggregate)


class Gauge(_Metric):
    __slots__ = ("aggregate",)
    type: MetricType = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str], *, max_series: int,
                 aggregate: Aggregate = "sum", keep_on_overflow: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames, max_series=max_series, keep_on_overflow=keep_on_overflow)
        self.aggregate: Aggregate = aggregate

    def set(self, labels: Labels = (), value: float = 0.0) -> None:
        s = self.series
        if labels in s:
            s[labels] = value
        else:
            s[self._key(labels)] = value

    def inc(self, labels: Labels = (), value: float = 1.0) -> None:
        try:
            self.series[labels] += value
        except KeyError:
            key = self._key(labels)
            s = self.series
            s[key] = s.get(key, 0.0) + value

    def dec(self, labels: Labels = (), value: float = 1.0) -> None:
        self.inc(labels, -value)

    def clear(self) -> None:
        """Forget every series (gauges recomputed at each collection)."""
        self.series.clear()

    def family(self, aggregate: Aggregate | None = None) -> Family:
        return Family(self.name, "gauge", self.help, self.labelnames, dict(self.series), (),
                      aggregate or self.aggregate)


class Histogram(_Metric):
    __slots__ = ("buckets", "_width")
    type: MetricType = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str], *, buckets: Sequence[float],
                 max_series: int, keep_on_overflow: Sequence[str] = ()) -> None:
        if "le" in labelnames:
            raise ValueError(f"metric {name}: 'le' is reserved in histograms")
        bs = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bs or list(bs) != sorted(set(bs)):
            raise ValueError(f"metric {name}: buckets must be increasing and not empty")
        super().__init__(name, help, labelnames, max_series=max_series, keep_on_overflow=keep_on_overflow)
        self.buckets = bs
        self._width = len(bs) + 2

    def observe(self, labels: Labels, value: float) -> None:
        try:
            row = self.series[labels]
        except KeyError:
            key = self._key(labels)
            row = self.series.get(key)
            if row is None:
                row = self.series[key] = [0.0] * self._width
        self.observe_row(row, value)

    def observe_row(self, row: list[float], value: float) -> None:
        """:meth:`observe` into a row from :meth:`own_row` (no label lookup)."""
        # bisect_left: the first bound >= value, i.e. the smallest "le" bucket holding it; most
        # values (milliseconds of a request) fall in the first one
        buckets = self.buckets
        row[0 if value <= buckets[0] else bisect_left(buckets, value)] += 1
        row[-1] += value

    def family(self, aggregate: Aggregate = "sum") -> Family:
        return Family(self.name, "histogram", self.help, self.labelnames,
                      {k: list(v) for k, v in self.series.items()}, self.buckets, "sum")


class Registry:
    """The metrics of one process; registering a name twice returns the same metric."""

    def __init__(self, *, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self._metrics: dict[str, _Metric] = {}

    def _get(self, name: str, cls: type[_Metric], labelnames: Sequence[str]) -> _Metric | None:
        m = self._metrics.get(name)
        if m is None:
            return None
        if type(m) is not cls or m.labelnames != tuple(labelnames):
            raise ValueError(f"metric {name} is already registered as a {m.type} with labels {m.labelnames}")
        return m

    def counter(self, name: str, help: str, labelnames: Sequence[str] = (), *,
                keep_on_overflow: Sequence[str] = (), max_series: int | None = None) -> Counter:
        m = self._get(name, Counter, labelnames)
        if m is None:
            m = self._metrics[name] = Counter(name, help, labelnames, max_series=max_series or self.max_series,
                                              keep_on_overflow=keep_on_overflow)
        assert isinstance(m, Counter)
        return m

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = (), *, aggregate: Aggregate = "sum",
              keep_on_overflow: Sequence[str] = (), max_series: int | None = None) -> Gauge:
        m = self._get(name, Gauge, labelnames)
        if m is None:
            m = self._metrics[name] = Gauge(name, help, labelnames, max_series=max_series or self.max_series,
                                            aggregate=aggregate, keep_on_overflow=keep_on_overflow)
        assert isinstance(m, Gauge)
        return m

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float],
                  keep_on_overflow: Sequence[str] = (), max_series: int | None = None) -> Histogram:
        m = self._get(name, Histogram, labelnames)
        if m is None:
            m = self._metrics[name] = Histogram(name, help, labelnames, buckets=buckets,
                                                max_series=max_series or self.max_series,
                                                keep_on_overflow=keep_on_overflow)
        assert isinstance(m, Histogram)
        if tuple(float(b) for b in buckets if not math.isinf(b)) != m.buckets:
            raise ValueError(f"metric {name} is already registered with other buckets")
        return m

    def get(self, name: str) -> _Metric | None:
        return self._metrics.get(name)

    def unregister(self, name: str) -> None:
        self._metrics.pop(name, None)

    def collect(self) -> list[Family]:
        """A copy of every metric's samples, plus the overflow counter of labelled metrics."""
        out = [m.family() for m in self._metrics.values()]
        over = Family(OVERFLOW_METRIC, "counter",
                      "Updates folded into the overflow series of a metric whose label sets reached the cap",
                      ("metric",))
        for m in self._metrics.values():
            if m.labelnames:
                over.series[(m.name,)] = float(m.overflowed)
        out.append(over)
        return out


REGISTRY = Registry()
"""The process-wide registry: what this worker's plugins record into."""


def merge(groups: Iterable[Iterable[Family]]) -> list[Family]:
    """Add up the families of several processes (in first-seen order).

    Counters and histograms add; a gauge adds (``sum``/``total``) or keeps the largest
    value (``max``).  A family whose shape (type, labels, buckets) differs from the first
    one seen under that name (two versions during a rolling reload) is left out.
    """
    out: dict[str, Family] = {}
    for group in groups:
        for fam in group:
            acc = out.get(fam.name)
            if acc is None:
                out[fam.name] = fam.copy()
                continue
            if not acc.same_shape(fam):
                continue
            s = acc.series
            if fam.type == "histogram":
                for k, row in fam.series.items():
                    cur = s.get(k)
                    if cur is None:
                        s[k] = list(row)
                    else:
                        for i, v in enumerate(row):
                            cur[i] += v
            elif fam.type == "gauge" and acc.aggregate == "max":
                for k, v in fam.series.items():
                    cur = s.get(k)
                    s[k] = v if cur is None or v > cur else cur
            else:
                for k, v in fam.series.items():
                    s[k] = s.get(k, 0.0) + v
    return list(out.values())


# -- exposition -------------------------------------------------------------------------------

def _escape_help(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 2 ** 53:
        return str(int(v))
    return repr(float(v))


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape_value(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def render(families: Iterable[Family], *, prefix: str = "") -> str:
    """The Prometheus text format 0.0.4: HELP/TYPE lines, then each series (sorted)."""
    lines: list[str] = []
    for fam in families:
        name = prefix + fam.name
        lines.append(f"# HELP {name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {name} {fam.type}")
        names = fam.labelnames
        if fam.type == "histogram":
            les = [f'le="{_num(b)}"' for b in fam.buckets] + ['le="+Inf"']
            for key in sorted(fam.series):
                row = fam.series[key]
                acc = 0.0
                for le, n in zip(les, row):
                    acc += n
                    lines.append(f"{name}_bucket{_labels(names, key, le)} {_num(acc)}")
                lab = _labels(names, key)
                lines.append(f"{name}_sum{lab} {_num(row[-1])}")
                lines.append(f"{name}_count{lab} {_num(acc)}")
        else:
            for key in sorted(fam.series):
                lines.append(f"{name}{_labels(names, key)} {_num(fam.series[key])}")
    lines.append("")
    return "\n".join(lines)
