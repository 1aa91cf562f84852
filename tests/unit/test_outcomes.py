"""src/ci_mcp/backends/local/outcomes.py: how a run's ending becomes its status, restart and notice, and how the
server's own failures during a run are said once each.

The endings happen for real in tests/local (time limits, dying kernels, failed restarts); here each rule is
checked directly, including the ones no real kernel reaches on demand (a failed restart after a server error)."""

from __future__ import annotations

import pytest

from ci_mcp.backends.local.outcomes import Ending, RunProblems, ending, name_list
from ci_mcp.errors import CiMcpError, StorageFullError


def end(outcome: str, *, returncode: int | None = None, oom: bool = False) -> Ending:
    return ending(outcome, 30, returncode=returncode, oom=oom, memory_mb=512)  # type: ignore[arg-type]


def test_a_clean_run_or_an_error_in_the_code_keeps_the_kernel_and_says_nothing() -> None:
    assert end("ok") == Ending("ok")
    assert end("error") == Ending("error")


def test_an_interrupted_run_is_a_timeout_that_keeps_the_kernel() -> None:
    interrupted = end("interrupted")
    assert (interrupted.status, interrupted.restart) == ("timeout", False)
    assert "time limit of 30 s" in interrupted.notice and "kernel and its variables are kept" in interrupted.notice


def test_a_run_that_ignores_the_interrupt_is_a_timeout_with_a_restarted_kernel_said_either_way() -> None:
    stuck = end("timeout")
    assert (stuck.status, stuck.restart, stuck.only_if_restarted) == ("timeout", True, False)
    assert "did not respond to an interrupt" in stuck.notice


def test_a_server_error_restarts_the_kernel_and_says_so_only_when_the_restart_worked() -> None:
    failed = end("server_error")
    assert (failed.status, failed.restart, failed.only_if_restarted) == ("server_error", True, True)
    assert "restarted" in failed.notice


@pytest.mark.parametrize(
    ("oom", "cause"),
    [(True, "ran out of memory (the limit is 512 MB)"), (False, "common causes are running out of memory")],
)
def test_a_dead_kernel_is_restarted_and_the_notice_names_its_exit_code_and_likely_cause(oom: bool, cause: str) -> None:
    died = end("died", returncode=-9, oom=oom)
    assert (died.status, died.restart, died.only_if_restarted) == ("kernel_died", True, False)
    assert "exit code -9" in died.notice and cause in died.notice


def test_each_failure_of_the_server_is_said_once_and_a_foreign_one_names_what_was_being_done() -> None:
    problems = RunProblems("s1")
    problems.failed(CiMcpError("The store is read-only."), "keeping an output")
    problems.failed(CiMcpError("The store is read-only."), "keeping the full output")
    problems.failed(ValueError("bad"), "restarting the kernel")
    assert problems.notices() == [
        "The store is read-only.",
        "restarting the kernel failed inside the server (ValueError: bad)",
    ]


def test_outputs_a_full_store_did_not_keep_are_grouped_by_cause_after_the_failures() -> None:
    problems = RunProblems("s1")
    for name in ("a.png", "b.png"):
        problems.failed(StorageFullError(f"full: {name}", lost=name, cause="The disk is full."), "keeping an output")
    problems.failed(StorageFullError("The quota is reached."), "keeping the full output")  # names nothing lost
    assert problems.notices() == [
        "The quota is reached.",
        'Not kept: "a.png", "b.png" (files the code wrote stay in its working directory). The disk is full.',
    ]


def test_a_long_list_of_names_shows_twenty_and_counts_the_rest() -> None:
    listed = name_list([f"f{i}" for i in range(23)])
    assert listed.endswith('"f19" and 3 more') and '"f20"' not in listed
