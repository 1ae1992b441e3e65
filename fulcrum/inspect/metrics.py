"""Prometheus text as ``fulcrum inspect`` reads it: counters, gauges and histograms from one
scrape, the difference of two scrapes (a window), and quantiles from histogram buckets.

A counter or a histogram read once holds everything since its process started; two scrapes
``window`` seconds apart give what happened in between. ``Scrape.since`` names which one a
figure is, and every result that uses one says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


class MetricsError(ValueError):
    """Text that is not Prometheus' exposition format; the message says where."""


@dataclass
class Scrape:
    """Samples by name (with the suffixes ``_bucket``, ``_sum``, ``_count``, ``_total`` as
    served), each a map of its labels to its value. ``window`` is 0 for one scrape (figures
    since the process started) and the seconds between two scrapes for a ``delta``."""

    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)
    window: float = 0.0

    @property
    def since(self) -> str:
        return f"over {self.window:g} s" if self.window > 0 else "since the process started"

    def series(self, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
        """Every sample of ``name`` whose labels include ``match``."""
        found = []
        for labels, value in self.samples.get(name, {}).items():
            as_dict = dict(labels)
            if all(as_dict.get(k) == v for k, v in match.items()):
                found.append((as_dict, value))
        return found

    def has(self, name: str) -> bool:
        return name in self.samples

    def total(self, name: str, **match: str) -> float | None:
        """The sum over the matching samples; None when the metric is not served."""
        if name not in self.samples:
            return None
        return sum(v for _, v in self.series(name, **match))


def parse(text: str, families: Collection[str] = ()) -> Scrape:
    """One scrape's text; only the metric ``families`` named, if any (the other lines are
    skipped unparsed: most of a large apiserver's 50,000 samples are not read). MetricsError
    when it is not the exposition format."""
    if families:
        keep = tuple(f for name in families for f in (name, f"# HELP {name} ", f"# TYPE {name} "))
        text = "\n".join(line for line in text.splitlines() if line.startswith(keep))
    scrape = Scrape()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                scrape.samples.setdefault(sample.name, {})[labels] = float(sample.value)
    except (ValueError, TypeError, IndexError) as exc:
        raise MetricsError(f"not Prometheus metrics text: {exc}") from None
    return scrape


def delta(before: Scrape, after: Scrape, window: float) -> Scrape:
    """``after - before`` for every sample in ``after`` (a sample new in ``after`` counts
    whole; one that went down, a restarted process, counts from 0): counters and histograms over
    the window. Gauges are differenced too, so read gauges from ``after`` itself."""
    out = Scrape(window=window)
    for name, series in after.samples.items():
        old = before.samples.get(name, {})
        out.samples[name] = {
            labels: value - old[labels] if labels in old and value >= old[labels] else value
            for labels, value in series.items()
        }
    return out


def buckets(
    scrape: Scrape, name: str, key: Callable[[dict[str, str]], str | None] = lambda _: ""
) -> dict[str, list[tuple[float, float]]]:
    """Histogram ``name``'s cumulative buckets summed per ``key(labels)`` (None: left out), each
    group as [(le, count)] sorted by le."""
    grouped: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in scrape.series(f"{name}_bucket"):
        group = key(labels)
        if group is None or "le" not in labels:
            continue
        grouped[group][float(labels["le"])] += value
    return {g: sorted(bs.items()) for g, bs in grouped.items()}


def quantile(q: float, cumulative: Iterable[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram from its cumulative buckets [(le, count)], by linear
    interpolation within the bucket it falls in, as Prometheus' ``histogram_quantile`` does: the
    highest finite bound when it falls in +Inf's. None with no observations."""
    rows = sorted(cumulative)
    if not rows or rows[-1][1] <= 0:
        return None
    total = rows[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in rows:
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            if count == lower_count:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = (le if not math.isinf(le) else lower_bound), count
    return lower_bound


def observed(cumulative: Iterable[tuple[float, float]]) -> float:
    """How many observations a histogram's buckets hold (its +Inf bucket)."""
    rows = sorted(cumulative)
    return rows[-1][1] if rows else 0.0


def group_sum(
    scrape: Scrape, name: str, key: Callable[[Mapping[str, str]], str | None]
) -> dict[str, float]:
    """The samples of ``name`` summed per ``key(labels)`` (None: left out)."""
    out: dict[str, float] = defaultdict(float)
    for labels, value in scrape.series(name):
        group = key(labels)
        if group is not None:
            out[group] += value
    return dict(out)
