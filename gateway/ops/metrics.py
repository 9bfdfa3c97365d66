"""Prometheus text-format metrics: a few counters and histograms, no dependency, no I/O.

Per process: with several replicas or workers, Prometheus scrapes each and sums.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Sequence

__all__ = ["Counter", "Gauge", "Histogram", "Metrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.values: dict[Labels, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(k)} {v:g}" for k, v in sorted(self.values.items())]
        return lines


class Gauge:
    """A value per label set; ``choose`` keeps one series per group, for "which one now" metrics."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.values: dict[Labels, float] = {}

    def choose(self, group: str, **labels: str) -> None:
        """Set this label set to 1 and drop the others with the same value of label ``group``."""
        self.values = {key: value for key, value in self.values.items() if (group, labels[group]) not in key}
        self.values[tuple(sorted(labels.items()))] = 1.0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        lines += [f"{self.name}{_labels(k)} {v:g}" for k, v in sorted(self.values.items())]
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help_text
        self.buckets = tuple(buckets)
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        self.observe_labelled(tuple(sorted(labels.items())), value)

    def observe_labelled(self, key: Labels, value: float) -> None:
        counts = self.counts.get(key) or self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[key] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                bucket_labels = _labels(key, 'le="' + le + '"')
                lines.append(f"{self.name}_bucket{bucket_labels} {running}")
            lines.append(f"{self.name}_sum{_labels(key)} {self.sums[key]:g}")
            lines.append(f"{self.name}_count{_labels(key)} {running}")
        return lines


class Metrics:
    """Everything the gateway counts."""

    def __init__(self) -> None:
        self.requests = Counter("gateway_requests_total", "Requests answered, by route class and status.")
        self.latency = Histogram("gateway_request_duration_seconds", "Time to the response, by route class.")
        self.presigns = Counter("gateway_presigned_urls_total", "Presigned URLs handed out, by kind.")
        self.uploads = Counter(
            "gateway_uploads_total", "Multipart uploads by event (started, completed, aborted, relay_failed)."
        )
        self.upload_mode = Gauge(
            "gateway_upload_mode",
            "1 for the mode the latest upload start chose, per upload kind (multipart: adopt, relay, refused; "
            "legacy: presign, via_gateway, unchanged), with why.",
        )
        self.proxied_bytes = Counter("gateway_proxied_bytes_total", "Body bytes forwarded, by direction.")
        self.upstream_errors = Counter("gateway_upstream_errors_total", "Registry unreachable, timed out or 5xx.")
        self.s3_errors = Counter("gateway_s3_errors_total", "S3 calls that failed, by kind.")
        self.connections_closed = Counter(
            "gateway_client_connections_closed_total",
            "Client connections the gateway closed or refused, by reason (header_timeout, write_timeout, refused).",
        )

    def answered(self, route: str, status: str, elapsed_s: float) -> None:
        """One request answered: per request, so the label keys are built as they are stored (sorted by name)."""
        self.requests.values[(("route", route), ("status", status))] += 1
        self.latency.observe_labelled((("route", route),), elapsed_s)

    def render(self) -> str:
        families = (
            self.requests,
            self.latency,
            self.presigns,
            self.uploads,
            self.upload_mode,
            self.proxied_bytes,
            self.upstream_errors,
            self.s3_errors,
            self.connections_closed,
        )
        return "\n".join(line for family in families for line in family.render()) + "\n"
