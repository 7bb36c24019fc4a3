"""The serving metrics' ``transport`` label: REST and gRPC requests counted apart."""

from __future__ import annotations

from pathlib import Path

from modelops.serving.metrics import ServerMetrics


def _lines(metrics: ServerMetrics) -> set[str]:
    return set(metrics.render().decode().splitlines())


def test_requests_latency_and_errors_are_labelled_by_transport() -> None:
    metrics = ServerMetrics()
    stats = metrics.stats("iris", "iris-v1")
    stats.rest.observe(0.001, 200)
    stats.rest.observe(0.001, 200)
    stats.grpc.observe(0.003, 404)
    lines = _lines(metrics)
    rest = 'model="iris",transport="rest",version="iris-v1"'
    grpc = 'model="iris",transport="grpc",version="iris-v1"'
    assert f"modelops_serving_requests_total{{{rest}}} 2.0" in lines
    assert f"modelops_serving_requests_total{{{grpc}}} 1.0" in lines
    assert f"modelops_serving_request_duration_seconds_count{{{grpc}}} 1.0" in lines
    assert f'modelops_serving_errors_total{{code="404",{grpc}}} 1.0' in lines
    assert not any(
        line.startswith(f'modelops_serving_errors_total{{code="404",{rest}') for line in lines
    )


def test_workers_counters_are_summed_per_transport(tmp_path: Path) -> None:
    first = ServerMetrics(worker=0, peers_dir=tmp_path, workers=2)
    second = ServerMetrics(worker=1, peers_dir=tmp_path, workers=2)
    first.stats("iris", "iris-v1").grpc.observe(0.001, 200)
    second.stats("iris", "iris-v1").grpc.observe(0.001, 200)
    second.stats("iris", "iris-v1").rest.observe(0.001, 200)
    second.write_snapshot()
    lines = _lines(first)
    assert (
        'modelops_serving_requests_total{model="iris",transport="grpc",version="iris-v1"} 2.0'
        in lines
    )
    assert (
        'modelops_serving_requests_total{model="iris",transport="rest",version="iris-v1"} 1.0'
        in lines
    )


def test_a_versions_totals_add_up_every_transport() -> None:
    # What the sketch windows record: requests and errors of the version, whatever the transport.
    stats = ServerMetrics().stats("iris", "iris-v1")
    stats.rest.observe(0.001, 500)
    stats.grpc.observe(0.001, 400)
    stats.grpc.observe(0.001, 200)
    assert (stats.requests, stats.error_count, sum(stats.latency)) == (3, 2, 3)
