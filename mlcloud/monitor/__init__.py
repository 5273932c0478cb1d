"""Monitoring (issue 13; DESIGN.md, "The MLOps loop"): what endpoints receive, compared with what
their model was trained on.

* :mod:`~mlcloud.monitor.capture`: captured requests read back as arrays, on any provider.
* :mod:`~mlcloud.monitor.profile`: the training baseline stored in a model dir
  (``runtime.save_model(..., reference=X)``, written by :mod:`mlcloud.modelprofile`).
* :mod:`~mlcloud.monitor.stats` and :mod:`~mlcloud.monitor.drift`: drift per feature and for the
  predictions (the rule is in drift's docstring); :mod:`~mlcloud.monitor.check`: one check of
  an endpoint (``mlcloud monitor``).
* :mod:`~mlcloud.monitor.report`: the HTML report and the Prometheus gauges.
* :mod:`~mlcloud.monitor.alerts`: scheduled checks firing a pipeline's drift trigger.

Submodules are imported on use: numpy and scipy load only when monitoring runs.
"""
