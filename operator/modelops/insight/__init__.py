"""Things people look at: the drift report and model cards (HTML), the Deployment tree, the plugin.

- :mod:`modelops.insight.report`: a DriftMonitor's reference profile and merged live sketch ->
  one self-contained HTML page (pure);
- :mod:`modelops.insight.tree`: a Deployment with its versions, pods and monitors -> a rich
  tree or plain text (pure);
- :mod:`modelops.insight.card`: a ModelVersion, its profile, Deployments and monitors -> the
  model card, JSON and one self-contained HTML page (pure);
- :mod:`modelops.insight.reproduce`: ``reproduce``: train a version again from its lineage
  and compare predictions on its probe rows;
- :mod:`modelops.insight.plugin`: ``kubectl modelops`` (console script ``kubectl-modelops``).
"""
