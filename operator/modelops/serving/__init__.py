"""The model server (``python -m modelops serve``): Open Inference Protocol v2 over HTTP.

Endpoints: ``GET /v2/health/live``, ``/v2/health/ready`` (200 once the stable version of the
routing table is verified and loaded, else 503 with the reason), ``/v2`` (server metadata),
``/v2/models/{model}[/versions/{version}]`` (metadata), ``.../ready``, ``POST .../infer``
(``{version}`` is a ModelVersion name such as ``iris-v2`` or its number ``2``), and
``GET /metrics``. Errors are JSON ``{"error": "..."}``: 400 bad input, 404 unknown model,
version or path, 405 wrong method, 413 body over ``--max-body-bytes``, 503 version not
servable. ``parameters: {"probabilities": true}`` or ``outputs: [{"name": "predict_proba"}]``
adds class probabilities. ``POST .../feedback`` takes true labels by request id (see
:mod:`feedback`).

Modules: :mod:`app` (processes, CLI), :mod:`http` (HTTP/1.1), :mod:`server` (endpoints),
:mod:`protocol`
(requests -> numpy), :mod:`batcher` (micro-batching), :mod:`predictors` (batch predict),
:mod:`models` (verified loading), :mod:`state` (routing tables -> atomic serving states),
:mod:`router` (exact weighted split), :mod:`table` (the routing table contract),
:mod:`routing_source` (file or ConfigMap watch), :mod:`metrics`, :mod:`sketches`,
:mod:`feedback` (ledger of request ids, prediction logs, labels joined into quality objects),
:mod:`shadow` (shadow copies of stable's requests).
"""
