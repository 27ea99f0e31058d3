"""Reading a process' Prometheus metrics."""

from __future__ import annotations

import requests


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """A Prometheus endpoint's samples: (name, labels) -> value, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
