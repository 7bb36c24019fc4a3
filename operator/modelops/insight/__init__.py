"""Things people look at: the drift report (HTML), the Deployment tree, the kubectl plugin.

- :mod:`modelops.insight.report`: a DriftMonitor's reference profile and merged live sketch ->
  one self-contained HTML page (pure);
- :mod:`modelops.insight.tree`: a Deployment with its versions, pods and monitors -> a rich
  tree or plain text (pure);
- :mod:`modelops.insight.kubeconfig`: the user's kubeconfig -> API credentials;
- :mod:`modelops.insight.plugin`: ``kubectl modelops`` (console script ``kubectl-modelops``).
"""
