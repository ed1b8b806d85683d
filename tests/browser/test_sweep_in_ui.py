"""A sweep as the team sees it in the MLflow UI, in a new browser signed in as a team member.

A real `cvops sweep` (six trials of tests/data/sweep/objective.py, parallelism 2: four complete,
one pruned, one killed mid-run) runs on the harness server; the browser then opens the sweep's
experiment, where the trials are nested under the sweep's parent run, the parent run's page with
the best trial and the optimisation plots, and the comparison of the trials (parallel
coordinates) with nothing set up beyond the sweep itself.

Screenshots land in test-artifacts/browser/ (docs/screenshots/ with CVOPS_UPDATE_SCREENSHOTS=1,
which docs/sweeps.md shows)."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.browser.ui import MODEL_TRAINING_VIEW, assert_not_blank, new_browser_tab, save_screenshot
from tests.harness.sweeps import create_optuna_database, cvops, finished, sweep_env, write_sweep

pytestmark = [pytest.mark.browser, pytest.mark.integration]

optuna = pytest.importorskip("optuna")

VIEWPORT = {"width": 1400, "height": 1000}


@pytest.fixture(scope="module")
def sweep(tracking_server, postgres, tmp_path_factory):
    """The finished sweep: its study, parent run id, and the trials' run ids by trial number."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    storage = create_optuna_database(postgres)
    study_name = f"ui-{uuid.uuid4().hex[:6]}"
    spec = write_sweep(tmp_path, study_name)
    finished(cvops("sweep", str(spec), env=sweep_env(tracking_server, tmp_path, storage), cwd=tmp_path))
    study = optuna.load_study(study_name=study_name, storage=storage)
    return {
        "study": study,
        "parent_run_id": study.user_attrs["cvops.parent_run_id"],
        "experiment_id": study.user_attrs["cvops.experiment_id"],
        "trial_runs": {trial.number: trial.user_attrs["run_id"] for trial in study.get_trials()},
    }


@pytest.fixture(scope="module")
def team_member(tracking_server) -> tuple[str, str]:
    credentials = ("ui-sweeper", "sweeper-pw-" + uuid.uuid4().hex[:12])
    tracking_server.create_user(*credentials)
    return credentials


@pytest.fixture
def page(browser, team_member):
    context, tab = new_browser_tab(browser, team_member, VIEWPORT)
    yield tab
    context.close()


EXPAND_CHILD_RUNS = "button[data-component-id$='runnamecellrenderer.tsx_46']"


def test_the_trials_are_nested_under_the_sweeps_run(page, sweep, tracking_server):
    study = sweep["study"].study_name
    page.goto(f"{tracking_server.url}/#/experiments/{sweep['experiment_id']}/runs?{MODEL_TRAINING_VIEW}")
    parent_row = page.locator("[role='row']", has_text=f"sweep-{study}")
    parent_row.wait_for()
    assert page.get_by_text(f"{study}-trial-0", exact=True).count() == 0  # folded under the parent
    parent_row.locator(EXPAND_CHILD_RUNS).click()
    for number in sweep["trial_runs"]:
        page.get_by_text(f"{study}-trial-{number}", exact=True).wait_for()
    assert_not_blank(save_screenshot(page, "sweep-01-trials-under-the-sweep-run"))


def test_the_sweep_run_page_shows_the_best_trial_its_trials_and_plots(page, sweep, tracking_server):
    study = sweep["study"]
    page.goto(f"{tracking_server.url}/#/experiments/{sweep['experiment_id']}/runs/{sweep['parent_run_id']}")
    child_runs = page.get_by_test_id("key-value-Child runs")
    for number in sweep["trial_runs"]:
        child_runs.get_by_text(f"{study.study_name}-trial-{number}", exact=True).wait_for()
    page.get_by_text("sweep/best_value", exact=True).wait_for()
    assert page.get_by_text(f"best_trial: {study.best_trial.number}", exact=True).count() == 1
    assert_not_blank(save_screenshot(page, "sweep-02-sweep-run-page"))

    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("sweep", exact=True).first.click()
    page.get_by_text("optimization_history.png", exact=True).click()
    page.locator("img[alt='sweep/optimization_history.png']").wait_for()
    assert_not_blank(save_screenshot(page, "sweep-03-optimization-history"))


def test_the_trials_compare_in_parallel_coordinates(page, sweep, tracking_server):
    runs = json.dumps(list(sweep["trial_runs"].values()))
    page.goto(f"{tracking_server.url}/#/compare-runs?runs={runs}&experiments=[\"{sweep['experiment_id']}\"]")
    page.get_by_text(f"Comparing {len(sweep['trial_runs'])} Runs from 1 Experiment").wait_for()
    plot = page.locator(".parcoords")
    plot.wait_for()
    # The trials' parameters and the objective are the plot's axes without choosing anything.
    for axis in ("lr", "behaviour", "val_loss"):
        assert plot.get_by_text(axis, exact=True).count() >= 1, axis
    assert_not_blank(save_screenshot(page, "sweep-04-trials-parallel-coordinates"))
