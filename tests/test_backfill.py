"""The backfill job on real servers: history in the TSDB → `python -m jobs.backfill` → the ledger.

The job runs as users run it, as a process (and once through `ray job submit`), against
the local Ray; its days are checked against the simulator's ground truth and against
Metroculus' own answer, after a rerun and after a run killed halfway.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from devstack import stack
from devstack.simulator.history import write_blocks
from devstack.simulator.model import cluster_management_cost, ground_truth
from devstack.stack import ROOT
from k8scost import ledger
from k8scost.settings import DAY
from k8scost.stores.resources import Kind
from tests import helpers
from tests.conftest import TEST_SERVE_ENV
from tests.test_ledger import expected_costs, ledger_costs, ledger_estate, rid

pytestmark = pytest.mark.services

HOUR = 3600
DAYS = 6
# The job's environment: the tests' database and secret, a namespace of its own, and live
# cycles too rare to matter (the backfill's days are closed days anyway), the first one at
# once as in every test (conftest; `ray job submit` passes only these).
JOB_ENV = {
    "RAY_ADDRESS": helpers.RAY_ADDRESS,
    "RAY_NAMESPACE": "cloudtuner-backfill-tests",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "CLUSTER_SECRET": TEST_SERVE_ENV["CLUSTER_SECRET"],
    "MONGODB_DATABASE": TEST_SERVE_ENV["MONGODB_DATABASE"],
    "CYCLE_SECONDS": "3600",
    "LEDGER_START_SPREAD_SECONDS": "0",
}


@pytest.fixture(scope="module")
def history(serve_apps: str, accounts, tmp_path_factory: pytest.TempPathFactory):
    """Three tenants (run, resumed, submitted) with the same clusters; DAYS whole past days in the TSDB."""
    last_day = ledger.day_start(time.time() - 32 * HOUR)  # ended ≥ 8 h ago: out of the TSDB head
    first_day = last_day - timedelta(days=DAYS - 1)
    estate = ledger_estate(last_day.timestamp())
    tenants = [accounts.create(f"org-backfill-{n}")[0] for n in range(3)]
    blocks = tmp_path_factory.mktemp("blocks")
    start, end = first_day.timestamp() - 2 * HOUR, (last_day + timedelta(days=1)).timestamp() + 2 * HOUR
    for tenant in tenants:
        write_blocks(estate, {c.name: tenant.id for c in estate.clusters}, start, end, blocks)
    stack.load_blocks(blocks)
    return estate, tenants, [first_day + timedelta(days=k) for k in range(DAYS)]


def backfill_command(account_id: str, days: list, *extra: str) -> list[str]:
    end = days[-1] + timedelta(days=1)
    return [sys.executable, "-m", "jobs.backfill", "--cloud-account-id", account_id,
            "--start", days[0].date().isoformat(), "--end", end.date().isoformat(), *extra]


def run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env={**os.environ, **JOB_ENV}, capture_output=True, text=True, timeout=600)


def summary_of(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def assert_days_exact(estate, account_id: str, days: list) -> None:
    """Every day's resources as Metroculus costs them, and the clusters as the simulator does."""
    for day in days:
        got = ledger_costs(account_id, day)
        assert got == pytest.approx(expected_costs(account_id, day), rel=1e-9), day
        start, end = day.timestamp(), day.timestamp() + DAY
        for cluster in ("prod-eu", "prod-us"):
            truth = ground_truth(estate, start, end, cluster=cluster, include_idle=True)
            expected = truth.total + cluster_management_cost(estate, cluster, start, end)  # idle included
            assert got[rid(account_id, Kind.CLUSTER, cluster, None, cluster)] == pytest.approx(expected, rel=0.005)


def test_backfill_writes_every_day_and_a_rerun_changes_nothing(history) -> None:
    estate, (tenant, _, _), days = history
    first = run_job(*backfill_command(tenant.id, days))
    assert first.returncode == 0, first.stderr
    summary = summary_of(first.stdout)
    assert (summary["days"], summary["written_days"], summary["failed"]) == (DAYS, DAYS, [])
    assert f"backfill: {DAYS}/{DAYS} days (100 %)" in first.stdout + first.stderr
    assert_days_exact(estate, tenant.id, days)
    # Each resource-day is one +1 row. The last day may still be open, and then the actor's
    # own first cycle may have written it before the job's task came.
    closed = sum(len(ledger_costs(tenant.id, day)) for day in days[:-1])
    assert summary["rows_written"] in {closed, closed + len(ledger_costs(tenant.id, days[-1]))}

    before = [ledger_costs(tenant.id, day) for day in days]
    again = run_job(*backfill_command(tenant.id, days))
    assert again.returncode == 0, again.stderr
    assert summary_of(again.stdout)["written_days"] == DAYS  # a finished run starts over...
    assert summary_of(again.stdout)["rows_written"] == 0  # ...and changes nothing
    assert [ledger_costs(tenant.id, day) for day in days] == before


def test_an_interrupted_run_resumes_and_writes_each_day_once(history) -> None:
    estate, (_, tenant, _), days = history
    job = subprocess.Popen(backfill_command(tenant.id, days, "--parallel", "1"), cwd=ROOT,
                           env={**os.environ, **JOB_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in job.stdout:  # killed once two days are done: mid-run, a third in flight
            if f"backfill: 2/{DAYS} days" in line:
                job.send_signal(signal.SIGKILL)
                break
    finally:
        job.kill()
        job.wait(60)
    resumed = run_job(*backfill_command(tenant.id, days))
    assert resumed.returncode == 0, resumed.stderr
    summary = summary_of(resumed.stdout)
    assert f"resuming, {summary['resumed_with_done']} of {DAYS} days already done" in resumed.stdout
    assert 2 <= summary["resumed_with_done"] < DAYS
    assert summary["written_days"] == DAYS - summary["resumed_with_done"]
    assert_days_exact(estate, tenant.id, days)


def test_ray_job_submit_runs_the_backfill_as_the_readme_says(history) -> None:
    estate, (_, _, tenant), days = history
    runtime_env = json.dumps({"env_vars": {k: v for k, v in JOB_ENV.items() if k != "RAY_ADDRESS"}})
    submitted = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ray"), "job", "submit", "--address", helpers.RAY_DASHBOARD,
         "--working-dir", ".", "--runtime-env-json", runtime_env, "--",
         *["python", *backfill_command(tenant.id, days[-2:])[1:]]],
        cwd=ROOT, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, capture_output=True, text=True,
        timeout=600,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "backfill: 2/2 days (100 %)" in submitted.stdout
    assert_days_exact(estate, tenant.id, days[-2:])


@pytest.mark.parametrize(("args", "message"), [
    (["--start", "2026-10-05", "--end", "2026-10-01"], "must be before --end"),
    (["--start", "2026-13-01", "--end", "2026-10-01"], "is not a day in the form YYYY-MM-DD"),
    (["--start", "2020-01-01", "--end", "2020-01-02"], "the TSDB keeps raw samples for 100 days (TSDB_RAW_RETENTION_DAYS)"),
    (["--start", "2026-10-01", "--end", "2999-01-01"], "is after tomorrow"),
    (["--start", "2026-10-01", "--end", "2026-10-02", "--parallel", "0"], "is not a positive whole number"),
])
def test_bad_arguments_are_refused_naming_the_problem(args: list[str], message: str) -> None:
    done = run_job(sys.executable, "-m", "jobs.backfill", "--cloud-account-id", "x", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_an_account_is_required_and_must_exist(history) -> None:
    days = history[2]
    missing = run_job(sys.executable, "-m", "jobs.backfill", "--start", "2026-10-01", "--end", "2026-10-02")
    assert missing.returncode == 2 and "one of the arguments --cloud-account-id --organization-id is required" in missing.stderr
    unknown = run_job(*backfill_command("no-such-account", days))
    assert unknown.returncode == 2 and "cloud account 'no-such-account' does not exist" in unknown.stderr
    empty = run_job(sys.executable, "-m", "jobs.backfill", "--organization-id", "org-without-accounts",
                    "--start", days[0].date().isoformat(), "--end", days[1].date().isoformat())
    assert empty.returncode == 2 and "has no live Kubernetes cloud account" in empty.stderr


def test_a_day_90_days_old_is_backfilled_from_the_bucket(serve_apps: str, accounts, tmp_path) -> None:
    """A day Receive never held (it keeps hours): its blocks in the bucket, answered by the
    Store Gateway through Query, backfilled exactly as the recent days are."""
    day = ledger.day_start(time.time()) - timedelta(days=90)
    estate = ledger_estate(day.timestamp())
    tenant, _ = accounts.create("org-backfill-90")
    write_blocks(estate, {c.name: tenant.id for c in estate.clusters},
                 day.timestamp() - 2 * HOUR, day.timestamp() + DAY + 2 * HOUR, tmp_path)
    uploaded = stack.load_blocks(tmp_path)
    assert uploaded[tenant.id]
    done = run_job(*backfill_command(tenant.id, [day]))
    assert done.returncode == 0, done.stderr
    assert (summary_of(done.stdout)["written_days"], summary_of(done.stdout)["failed"]) == (1, [])
    assert_days_exact(estate, tenant.id, [day])
