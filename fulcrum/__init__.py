"""Fulcrum's command line and cluster harness: the one place that wires the layers together."""
