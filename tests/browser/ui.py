"""What every browser test does the same way: a new signed-in tab, a screenshot kept for the docs."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACT_DIR = REPO_ROOT / "test-artifacts" / "browser"
DOCS_SCREENSHOT_DIR = REPO_ROOT / "docs" / "screenshots"
UI_TIMEOUT_MS = 60_000
# The Model training view, spelled out in links cvops prints (MLflow 3.17's UI ignores the
# experiment's mlflow.experimentKind tag; the link, else the browser's last choice, decides).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def new_browser_tab(browser, credentials, viewport):
    """A tab of a new browser (empty storage), signed in as a user is: the browser answers the
    server's basic-auth challenge with the user's name and password. Nothing else is set."""
    context = browser.new_context(
        http_credentials={"username": credentials[0], "password": credentials[1]}, viewport=viewport,
    )
    context.set_default_timeout(UI_TIMEOUT_MS)
    return context, context.new_page()


def save_screenshot(tab, name: str, for_docs: bool = True) -> Path:
    """Save under test-artifacts/browser/ (and docs/screenshots/ when asked); return the file."""
    from PIL import Image

    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACT_DIR / f"{name}.png"
    path.write_bytes(tab.screenshot())
    if for_docs and os.environ.get("CVOPS_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        # A 64-colour palette keeps a UI screenshot legible at a fraction of the size.
        with Image.open(path) as shot:
            shot.convert("RGB").quantize(colors=64).save(DOCS_SCREENSHOT_DIR / f"{name}.png", optimize=True)
    return path


def assert_not_blank(path: Path) -> None:
    from PIL import Image, ImageStat

    with Image.open(path) as shot:
        stddev = ImageStat.Stat(shot.convert("L")).stddev[0]
    assert stddev > 10, f"{path} looks blank (grey-level stddev {stddev:.1f})"
