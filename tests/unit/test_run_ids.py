"""The tests' own guard against fixed container IDs (helpers/netns.py SESSION).

Host veth names derive from the container ID, so a fixed ID ("ctr-1") in a test lets two
runs on one host (a developer's beside CI) take each other's veths. Every plugin exec of
the suite goes through PluginRunner.env or the libcni driver, which refuse such an ID.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import netns
from helpers.netns import adopt, owned_by_this_run, require_own_id, run_id, unique
from helpers.plugin import PluginRunner


def test_a_fixed_id_is_refused_with_the_way_out() -> None:
    for fixed in ("ctr-1", "resident", "hostile-add-bad-json", "a" * 64, "0" * 64):
        with pytest.raises(ValueError, match=r"not unique to this test run.*run_id"):
            require_own_id(fixed)


def test_ids_of_this_run_pass() -> None:
    for own in (run_id("ctr-1"), run_id("resident"), f"storm0-1-{unique('', 8)}",
                unique("ctr", 32), f"{unique('rs')}-r"):
        require_own_id(own)
        assert owned_by_this_run(own)
    docker_id = "f" * 8 + unique("", 32) + "e" * 24  # stands for a dockerd-made 64-hex ID
    assert not owned_by_this_run(docker_id[:8] + "0" * 56)
    assert adopt(docker_id) == docker_id and owned_by_this_run(docker_id)


def test_run_id_carries_the_session_token_and_differs_between_runs() -> None:
    assert run_id("ctr-1") == f"ctr-1-{netns.SESSION}" and len(netns.SESSION) == 8
    other_run = "ctr-1-" + "0" * 8  # what the same test in another process would pass
    assert other_run != run_id("ctr-1") and not owned_by_this_run(other_run)


def test_a_short_random_part_is_not_trusted() -> None:
    """unique('x', 4) has 3 random hex digits: another run may draw the same ones."""
    short = unique("x", 4)
    assert not owned_by_this_run(short)


def test_the_plugin_runner_refuses_a_fixed_id_before_any_exec(tmp_path: Path) -> None:
    runner = PluginRunner(tmp_path / "no-bin", tmp_path / "state")  # nothing is executed
    with pytest.raises(ValueError, match="'ctr-1'"):
        runner("ADD", {}, "ctr-1", "/var/run/netns/none")
    env = runner.env("DEL", run_id("ctr-1"))
    assert env["CNI_CONTAINERID"] == run_id("ctr-1")
    assert "CNI_CONTAINERID" not in runner.env("VERSION")  # no ID at all: nothing to check
