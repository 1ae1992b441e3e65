"""The kwok harness: the control plane's binaries, local clusters, Fulcrum's processes on them,
the extender's registration, kwok's Stages, the chart's rendering and the webhooks' certificates.
"""
