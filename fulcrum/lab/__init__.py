"""Experiments on a harness cluster or a trace: ``fulcrum bench``, ``compare`` (openb),
``demo``, the local-rebuild runs and ``simulate``, with the workloads they place.
"""

# The seed's pod mix (cpu/memory:weight), fulcrum bench's default; here, not in bench.py, so that
# the command's flags (fulcrum.bench_cli) name it without importing the experiment.
DEFAULT_MIX = "250m/512Mi:40,500m/1Gi:30,1/2Gi:20,2/4Gi:10"
