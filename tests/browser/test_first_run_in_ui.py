"""A team member's first look at a cvops run, in headless Chromium through the real login.

A run is tracked with the cvops SDK (loss, learning rate, AP, an annotated prediction image, a
registered model); the browser then signs in with HTTP basic credentials as a plain user, opens
the experiment link, sees the run in the runs table beside the training charts, opens the run's
artifacts and sees the prediction image, and registers the model and opens it in the registry.
Every tab is a new browser (empty local storage, no cookies): what it shows is what the server
gives a newcomer, a Model training workspace without MLflow's GenAI onboarding, telemetry notice
or assistant panel (services/mlflow/ui_defaults.py).

Screenshots land in test-artifacts/browser/; with CVOPS_UPDATE_SCREENSHOTS=1 they also replace
the ones docs/onboarding.md shows, so the documentation is what this test saw.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import mlflow.pyfunc
import pytest

from tests.browser.ui import MODEL_TRAINING_VIEW, assert_not_blank, new_browser_tab, save_screenshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# Tall enough that the run list and both chart sections (AP, then loss and lr) fit on one screen.
VIEWPORT = {"width": 1280, "height": 1100}
LAPTOP_VIEWPORT = {"width": 1366, "height": 768}
RUN_NAME = "faster-rcnn-r50-shapes"
MODEL_NAME_PREFIX = "shapes-detector"
BOX_COLOUR = (255, 40, 40)
CHART_CARD = "[data-testid='experiment-view-compare-runs-card']"
# MLflow 3.17.2's component ids (its UI bundle): the assistant panel's close button exists only
# while the panel is open; its floating button only while the panel is closed.
ASSISTANT_PANEL = "[data-component-id='mlflow.assistant.chat_panel.close']"
ASSISTANT_BUTTON = "button[data-assistant-ui='true']"
TELEMETRY_NOTICE = "Information about UI telemetry"
# Texts of the home page's Getting Started section: the demo banner and the GenAI feature cards.
GETTING_STARTED_CARDS = ("Start Demo", "New to MLflow?", "Capture and debug LLM interactions",
                         "Measure and compare LLM quality", "Version control and manage prompts")


@pytest.fixture(scope="module")
def team_member(tracking_server) -> tuple[str, str]:
    credentials = ("ui-bob", "bob-pw-" + uuid.uuid4().hex[:12])
    tracking_server.create_user(*credentials)
    return credentials


def _prediction_image():
    """A synthetic 'shapes' frame with two predicted boxes and their labels, as a detector logs."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (480, 320), (34, 48, 64))
    draw = ImageDraw.Draw(image)
    draw.ellipse([60, 70, 190, 200], fill=(90, 170, 90))
    draw.rectangle([280, 120, 420, 260], fill=(90, 120, 200))
    for box, label in (([52, 62, 198, 208], "circle 0.97"), ([272, 112, 428, 268], "square 0.91")):
        draw.rectangle(box, outline=BOX_COLOUR, width=4)
        draw.rectangle([box[0], box[1] - 16, box[0] + 90, box[1]], fill=BOX_COLOUR)
        draw.text((box[0] + 4, box[1] - 14), label, fill=(255, 255, 255))
    return image


class IdentityModel(mlflow.pyfunc.PythonModel):
    """The smallest model MLflow can serve, standing in for a trained detector in the registry."""

    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def tracked_run(tracking_server, team_member):
    """One training run logged by the cvops SDK as the team member, like a job would."""
    import cvops

    experiment = f"shapes-detection-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
        env.setenv("MLFLOW_TRACKING_USERNAME", team_member[0])
        env.setenv("MLFLOW_TRACKING_PASSWORD", team_member[1])
        with cvops.start_run(experiment=experiment, run_name=RUN_NAME,
                             tags={"task": "detection", "framework": "detectron2",
                                   "backbone": "R-50-FPN", "dataset": "shapes-v1"}) as run:
            run.log_params({"SOLVER.BASE_LR": 0.01, "SOLVER.IMS_PER_BATCH": 8})
            for step in range(0, 300, 10):
                run.log_metrics({"total_loss": 2.4 / (1 + step / 40), "lr": 0.01 * min(1, (step + 10) / 100)},
                                step=step)
            run.log_metrics({"bbox/AP": 61.2, "bbox/AP50": 88.4}, step=299)
            run.log_image(_prediction_image(), "predictions/val_000.png")
            assert run.flush(timeout_s=60), "the run did not reach the server"
    return {
        "run": run, "experiment": experiment, "credentials": team_member,
        "experiment_url": (f"{tracking_server.url}/#/experiments/{run.experiment_id}/runs?"
                           f"{MODEL_TRAINING_VIEW}&compareRunsMode=CHART"),
        "run_url": run.ui_url,  # as the SDK prints it
    }


@pytest.fixture
def page(browser, team_member):
    context, tab = new_browser_tab(browser, team_member, VIEWPORT)
    yield tab
    context.close()


@pytest.fixture
def laptop_page(browser, team_member):
    context, tab = new_browser_tab(browser, team_member, LAPTOP_VIEWPORT)
    yield tab
    context.close()


def wait_for_the_assistant_ui(tab) -> None:
    """The UI has decided whether the assistant panel is open: one of its two forms is on screen.
    The test reaches the server as 127.0.0.1, where MLflow offers the assistant and, left to
    itself, opens the panel right after the first render."""
    tab.locator(f"{ASSISTANT_PANEL}, {ASSISTANT_BUTTON}").first.wait_for()


def assert_no_assistant_panel(tab) -> None:
    assert tab.locator(ASSISTANT_PANEL).count() == 0, "the MLflow Assistant panel is open"


def truncated_chart_titles(tab) -> list[str]:
    """Chart titles the card cuts short ("ba…"): their text is wider than the room they get."""
    return tab.locator(f"{CHART_CARD} h4").evaluate_all(
        "titles => titles.filter(t => t.scrollWidth > t.clientWidth).map(t => t.textContent)")


def count_box_pixels(path: Path, region: dict) -> int:
    """Pixels of the annotation colour inside ``region`` (a DOM bounding box) of a screenshot."""
    from PIL import Image

    with Image.open(path) as shot:
        crop = shot.convert("RGB").crop((int(region["x"]), int(region["y"]),
                                         int(region["x"] + region["width"]),
                                         int(region["y"] + region["height"])))
        return sum(1 for r, g, b in crop.getdata() if r > 200 and g < 90 and b < 90)


def test_the_ui_refuses_a_wrong_password(browser, tracking_server, team_member):
    context = browser.new_context(
        http_credentials={"username": team_member[0], "password": "not-the-password"}, viewport=VIEWPORT,
    )
    try:
        tab = context.new_page()
        response = tab.goto(f"{tracking_server.url}/")
        assert response.status == 401
        assert response.headers["www-authenticate"].startswith("Basic")
        assert "not authenticated" in tab.inner_text("body")
    finally:
        context.close()


def test_a_new_browser_opens_on_a_clean_training_home_page(page, tracked_run, tracking_server):
    page.goto(f"{tracking_server.url}/")
    page.get_by_text("Welcome to MLflow").first.wait_for()
    page.get_by_role("link", name=tracked_run["experiment"]).wait_for()
    wait_for_the_assistant_ui(page)
    shot = save_screenshot(page, "00-home")

    # The server runs with MLflow's telemetry off, so a notice that it collects usage data is untrue.
    telemetry = page.request.get(f"{tracking_server.url}/ajax-api/3.0/mlflow/ui-telemetry").json()
    assert telemetry["disable_ui_telemetry"] is True
    assert page.get_by_text(TELEMETRY_NOTICE).count() == 0, "the UI telemetry notice is shown"
    assert_no_assistant_panel(page)
    for text in GETTING_STARTED_CARDS:
        assert page.get_by_text(text).count() == 0, f"GenAI getting-started card shown: {text!r}"
    # Collapsed, not removed: one click away for who wants it.
    assert page.get_by_text("Getting Started", exact=True).is_visible()
    assert page.get_by_role("link", name="Model registry").first.is_visible()
    assert_not_blank(shot)


def test_charts_are_readable_on_a_laptop_screen(laptop_page, tracked_run):
    laptop_page.goto(tracked_run["experiment_url"])
    laptop_page.get_by_text(RUN_NAME, exact=True).first.wait_for()
    wait_for_the_assistant_ui(laptop_page)
    laptop_page.locator(CHART_CARD).filter(has_text="bbox/AP").locator(
        ".scatterlayer .point").first.wait_for()
    save_screenshot(laptop_page, "laptop-experiment-charts", for_docs=False)

    titles = laptop_page.locator(f"{CHART_CARD} h4").all_inner_texts()
    assert {"bbox/AP", "bbox/AP50"} <= set(titles), titles
    assert truncated_chart_titles(laptop_page) == []
    assert_no_assistant_panel(laptop_page)


def test_experiment_opens_on_runs_and_training_charts(page, tracked_run):
    page.goto(tracked_run["experiment_url"])
    page.get_by_text(RUN_NAME, exact=True).first.wait_for()
    wait_for_the_assistant_ui(page)
    loss_chart = page.locator(CHART_CARD).filter(has_text="total_loss")
    loss_chart.locator(".js-plotly-plot svg.main-svg").first.wait_for()
    # A chart with a drawn line, not an empty frame.
    loss_chart.locator(".scatterlayer path.js-line").first.wait_for()
    shot = save_screenshot(page, "02-experiment-runs-and-charts")

    assert_no_assistant_panel(page)
    assert truncated_chart_titles(page) == []
    assert page.get_by_text(RUN_NAME, exact=True).first.is_visible()
    box = loss_chart.first.bounding_box()
    assert box["y"] + box["height"] <= VIEWPORT["height"], "the loss chart is below the fold"
    assert page.get_by_text("Model metrics").first.is_visible()
    for metric in ("total_loss", "lr", "bbox/AP"):
        assert page.locator(CHART_CARD).filter(has_text=metric).count() >= 1, f"no chart for {metric}"
    # GenAI-only navigation is absent in the Model training view.
    for genai_item in ("Judges", "Prompts", "Sessions"):
        assert page.get_by_role("link", name=genai_item, exact=True).count() == 0
    assert_not_blank(shot)


def test_a_plain_experiment_link_opens_model_training_in_a_new_browser(page, tracked_run, tracking_server):
    """MLflow 3.17.2 ignores the experiment's mlflow.experimentKind tag and opens GenAI for a
    browser that never chose; the server seeds Model training instead (services/mlflow/ui_defaults.py)."""
    page.goto(f"{tracking_server.url}/#/experiments/{tracked_run['run'].experiment_id}")
    page.get_by_text(RUN_NAME, exact=True).first.wait_for()

    assert "/overview" not in page.url and "workflowType=genai" not in page.url
    assert page.evaluate("localStorage.getItem('mlflow.workflowType_v1')") == '"machine_learning"'


def test_a_browser_that_chose_genai_keeps_it(browser, team_member, tracked_run, tracking_server):
    context, tab = new_browser_tab(browser, team_member, VIEWPORT)
    try:
        tab.goto(f"{tracking_server.url}/")
        # Chosen once the UI has started, as a person would (the sidebar's GenAI switch writes this).
        tab.get_by_text("Welcome to MLflow").first.wait_for()
        tab.evaluate("localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('genai'))")
        tab.goto(f"{tracking_server.url}/#/experiments/{tracked_run['run'].experiment_id}")
        tab.reload()
        tab.wait_for_url("**workflowType=genai**")

        assert "/overview" in tab.url
    finally:
        context.close()


def test_run_artifacts_show_the_annotated_prediction(page, tracked_run):
    page.goto(tracked_run["run_url"])
    page.get_by_text(RUN_NAME, exact=True).first.wait_for()
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("predictions", exact=True).click()
    page.get_by_text("val_000.png", exact=True).click()
    image = page.locator("img[src^='blob:']").filter(visible=True).first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [480, 320]
    shot = save_screenshot(page, "03-run-artifacts-prediction")

    assert_not_blank(shot)
    assert count_box_pixels(shot, image.bounding_box()) > 500, "the annotation boxes are not on screen"


def test_registered_model_lists_the_version_from_the_run(page, tracked_run, tracking_server):
    from cvops import registry

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
        env.setenv("MLFLOW_TRACKING_USERNAME", tracked_run["credentials"][0])
        env.setenv("MLFLOW_TRACKING_PASSWORD", tracked_run["credentials"][1])
        version = registry.log_model_and_register(
            tracked_run["run"], IdentityModel(), "pyfunc",
            registered_model_name=f"{MODEL_NAME_PREFIX}-{tracked_run['experiment']}", pip_requirements=[],
        )
    page.goto(f"{tracking_server.url}/#/models/{version.name}?{MODEL_TRAINING_VIEW}")
    page.get_by_text(version.name).first.wait_for()
    page.get_by_role("link", name=f"Version {version.version}").first.wait_for()
    save_screenshot(page, "04-registered-model")


def test_experiments_list_shows_the_new_experiment(page, tracked_run, tracking_server):
    page.goto(f"{tracking_server.url}/#/experiments")
    page.get_by_role("link", name=tracked_run["experiment"]).wait_for()
    wait_for_the_assistant_ui(page)
    assert_no_assistant_panel(page)
    save_screenshot(page, "01-experiments-list")
