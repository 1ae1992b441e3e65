from fulcrum_policy_example.gpu_nodes_for_gpu_pods import create

from policies.conformance import check_policy


def test_plugin_passes_the_conformance_suite() -> None:
    check_policy(create)
