"""The node checks' thresholds (``node/check_thresholds.py``): the shipped defaults, a user's
file over them, and every mistake in one named with its key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.check_thresholds import FIXED, SPECS, ThresholdError, Thresholds, parse, version_tuple
from node.plugin import Severity


def test_the_defaults_set_every_check_and_follow_the_kubelets_eviction() -> None:
    t = Thresholds.load()
    assert set(t.levels) == set(SPECS)
    assert t.judge("disk.kubelet", 90.1) == (Severity.ERROR, 90.0)  # nodefs.available<10%
    assert t.judge("disk.runtime", 85.1) == (Severity.ERROR, 85.0)  # imagefs.available<15%
    assert t.judge("inodes.kubelet", 95.1) == (Severity.ERROR, 95.0)  # nodefs.inodesFree<5%
    assert t.judge("memory.available", 99.0) == (Severity.ERROR, 100.0)  # memory.available<100Mi
    assert t.judge("memory.available", 100.0) == (Severity.ALARM, 256.0)  # strict, as the kubelet
    assert t.judge("memory.available_pct", 1.0) == (Severity.ALARM, 5.0)  # no Error level
    assert t.judge("clock.offset", 0.05) == (Severity.INFO, 0.1)  # Info shows the first level
    assert t.judge("kernel.version", "5.4.0-150-generic") == (Severity.WARN, "5.8")
    assert t.judge("kernel.version", "5.10.0") == (Severity.INFO, "5.8")  # 10 > 8, not "1" < "8"


def test_a_users_file_replaces_the_levels_of_the_checks_it_names(tmp_path: Path) -> None:
    user = tmp_path / "levels.yaml"
    user.write_text(
        "disk.kubelet: {error: 0}\nconntrack.pct: null\nkernel.version: {alarm: '6.1'}\n"
    )
    t = Thresholds.load(user)
    assert t.judge("disk.kubelet", 1.0) == (Severity.ERROR, 0.0)
    assert t.judge("disk.kubelet", 0.0) == (Severity.INFO, 0.0)
    assert t.judge("conntrack.pct", 100.0) == (Severity.INFO, None)  # levels off
    assert t.judge("kernel.version", "5.15") == (Severity.ALARM, "6.1")
    assert t.judge("disk.root", 91.0) == (Severity.ERROR, 90.0)  # not named: the default
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert Thresholds.load(empty).judge("disk.root", 91.0)[0] is Severity.ERROR


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("disk.kubelt: {error: 90}", r"f\.yaml: disk\.kubelt: unknown check; the checks with"),
        ("kubelet.health: {error: 1}", r"kubelet\.health: this check has no levels"),
        ("disk.root: {eror: 90}", r"disk\.root\.eror: unknown level; use warn, alarm or error"),
        ("disk.root: {warn: high}", r"disk\.root\.warn: 'high' is not a number; give one in"),
        ("disk.root: {warn: yes}", r"disk\.root\.warn: True is not a number"),
        ("disk.root: 90", r"disk\.root: expected levels like \{warn: 80"),
        ("disk.root: {warn: 95, error: 90}", r"disk\.root: warn 95.0 is beyond error 90.0"),
        ("memory.available: {warn: 100, alarm: 500}", r"warn 100.0 is beyond alarm 500.0"),
        ("kernel.version: {warn: 5.10}", r'not a quoted kernel version; .*"5\.10"'),
        ("kernel.version: {warn: 'new'}", r"kernel\.version\.warn: 'new' is not a version"),
        ("- disk.root", r"f\.yaml: expected a mapping of check names to levels"),
        ("disk.root: {warn: [", r"f\.yaml: not YAML"),
    ],
)
def test_every_mistake_names_the_key_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(ThresholdError, match=message):
        parse(text, "f.yaml")


def test_a_file_that_cannot_be_read_says_which_option_names_it(tmp_path: Path) -> None:
    with pytest.raises(ThresholdError, match=r"missing\.yaml: cannot read it .*thresholds"):
        Thresholds.load(tmp_path / "missing.yaml")


def test_versions_compare_part_by_part() -> None:
    assert version_tuple("6.18.44-fc-v1300") == (6, 18, 44)
    assert version_tuple("5.10") > version_tuple("5.8")
    assert set(FIXED).isdisjoint(SPECS)
