"""The model server (``python -m modelops serve``): Open Inference Protocol v2 over HTTP.

Modules: :mod:`app` (processes, CLI), :mod:`server` (HTTP endpoints), :mod:`protocol`
(requests -> numpy), :mod:`batcher` (micro-batching), :mod:`predictors` (batch predict),
:mod:`models` (verified loading), :mod:`state` (routing tables -> atomic serving states),
:mod:`router` (exact weighted split), :mod:`table` (the routing table contract),
:mod:`routing_source` (file or ConfigMap watch), :mod:`metrics`, :mod:`sketches`.
"""
