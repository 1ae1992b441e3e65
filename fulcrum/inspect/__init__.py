"""Inspection of any cluster from what it reads: ``fulcrum inspect``, ``explain`` and the HTML
report. It never starts a cluster (``fulcrum.harness``) and never reaches into the extender's or
the controller's internals: what it shares with them lives in ``kube``.
"""
