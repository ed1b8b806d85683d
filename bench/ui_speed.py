"""What users wait for (issue 19): MLflow's own UI pages in headless Chromium, stock vs ours.

    python -m bench.ui_speed [--quick|--full] [--steps N] [--api-only] [--run-page-variants N]

A fresh stack (bench/stack.py: stock ``mlflow server`` and ours on one PostgreSQL) gets the
workload of bench/ui_populate.py (20 experiments, 2 000 runs, 200 params and 40 metrics each),
which both servers then read. In Chromium (Debian's, through Playwright, as the browser tier
launches it), for each server, each page is opened cold (a new browser context: empty HTTP cache
and local storage, as a newcomer) and then warm (the same context, opened again), and timed from
navigation until what a user came for is on screen:

1. experiment page: the runs table holds the experiment's first 100 runs;
2. chart view of the 10 runs the chart view shows (the newest) × 8 training curves: every
   training-curve chart has drawn its 10 lines;
3. run page of a run with 200 params and 40 metrics: both tables list them all;
4. compare 10 runs: the params/metrics table and the parallel coordinates plot are drawn.

Each page's REST calls are captured from Chromium's request events: the server time is the time
from the request sent to the first response byte (the server's handling on a local socket), and
the bytes are the response body. Then, without a browser, the calls behind the slow pages:
``get-history-bulk-interval`` for 10 runs and ``metrics/get-history`` of one run on one training
curve, and ``runs/search`` with a param filter and metric ordering over all 2 000 runs.
Screenshots of each measured page (warm, half size) go to bench/results/ui_speed/.

``--run-page-variants N`` opens the run page N times more, in turn on stock, ours, servers that
differ from one of them in one setting (RUN_PAGE_VARIANTS) and ours with the browser's other way
of logging in, and reports medians: what the run page waits on.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlparse

import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from bench.report import RESULTS_DIR, parse_args, print_table, ratio, save
from bench.stack import Endpoint, Stack
from cvops.ui_links import MODEL_TRAINING_VIEW, run_ui_url
from bench.ui_populate import EXPERIMENTS, FILTER_PARAM, FILTER_VALUE, LONG_CURVES, SORT_METRIC, populate

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# Tall enough that the chart view's first section (the 8 training curves) is on screen at once:
# the UI draws only the charts in view.
VIEWPORT = {"width": 1600, "height": 1400}
PAGE_TIMEOUT_MS = 180_000
SCREENSHOT_DIR = RESULTS_DIR / "ui_speed"
CHART_CARD = "[data-testid='experiment-view-compare-runs-card']"
API_PREFIXES = ("/ajax-api/", "/api/", "/graphql")  # the run page reads its run through GraphQL
HISTORY_POINTS = 320  # what the UI's line charts ask get-history-bulk-interval for
# Each differs from stock or ours in one setting: the process count (stock runs 4 uvicorn
# workers, ours 2 gunicorn ones), or ours' auth layer.
RUN_PAGE_VARIANTS = {
    "stock, 2 workers": ("stock", ("--workers", "2")),
    "ours, 4 workers": ("ours", {"GUNICORN_WORKERS": "4"}),
    "ours, auth off": ("ours", {"MLFLOW_AUTH": "off"}),
}
LOGIN_ON_CHALLENGE = "ours, login answered per 401"  # ours, the browser logged in as _logged_in_context says


def chromium_path() -> str:
    path = os.environ.get("CVOPS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise SystemExit("Chromium not found: apt-get install chromium (or set CVOPS_CHROMIUM)")
    return path


class Pages:
    """The four pages of one experiment's data, and what marks each as shown."""

    def __init__(self, endpoint: Endpoint, experiment_id: str, run_ids: list[str]):
        base = f"{endpoint.url}/#/experiments/{experiment_id}"
        self.urls = {
            "experiment page": f"{base}/runs?{MODEL_TRAINING_VIEW}&compareRunsMode=TABLE",
            "chart view": f"{base}/runs?{MODEL_TRAINING_VIEW}&compareRunsMode=CHART",
            "run page": run_ui_url(endpoint.url, experiment_id, run_ids[-1]),  # the link the SDK prints
            "compare 10 runs": (f"{endpoint.url}/#/compare-runs?runs={quote(json.dumps(run_ids[-10:]))}"
                                f"&experiments={quote(json.dumps([experiment_id]))}"),
        }

    shown = {
        # ag-grid counts its rows in aria-rowcount, scrolled out of view or not: two header rows
        # (column groups, columns), then the runs.
        "experiment page": """() => {
            const grid = document.querySelector('[role=treegrid][aria-rowcount], [role=grid][aria-rowcount]');
            return grid && Number(grid.getAttribute('aria-rowcount')) >= 102
                   && document.querySelectorAll('.ag-center-cols-container [role=row]').length > 0; }""",
        # Sections come alphabetically (bbox, segm, then the unprefixed 'Model metrics') and only
        # charts in view are drawn, so as soon as the training curves' section exists it is scrolled
        # to, as a user would; then each training curve's card has its 10 runs' lines drawn.
        "chart view": f"""() => {{
            const section = [...document.querySelectorAll('*')].find(e => e.childElementCount === 0 &&
                e.textContent.trim() === 'Model metrics');
            if (!section) return false;
            section.scrollIntoView({{block: 'start'}});
            const cards = [...document.querySelectorAll("{CHART_CARD}")].filter(card =>
                {json.dumps(LONG_CURVES)}.some(key => card.innerText.split('\\n')[0].trim() === key));
            return cards.length === {len(LONG_CURVES)} && cards.every(card =>
                card.querySelectorAll('.scatterlayer .trace path.js-line').length >= 10); }}""",
        "run page": """() => [...document.querySelectorAll('*')].some(e => e.childElementCount === 0 &&
                e.textContent.trim() === 'Parameters (200)') &&
            [...document.querySelectorAll('*')].some(e => e.childElementCount === 0 &&
                e.textContent.trim() === 'Metrics (40)')""",
        "compare 10 runs": f"""() => document.body.innerText.includes('{FILTER_PARAM}')
            && document.querySelectorAll('.js-plotly-plot .parcoords, .js-plotly-plot .parcoords-line-layers')
               .length > 0""",
    }


class RequestLog:
    """The REST calls a page makes: path, server time (request sent → first byte), bytes."""

    QUIET_S = 1.0  # no call in flight for this long: the page has made the calls it makes

    def __init__(self, page):
        self.page = page
        self.calls: list[dict] = []
        self.in_flight = 0
        page.on("request", self._sent)
        page.on("requestfinished", self._finished)
        page.on("requestfailed", self._failed)

    @staticmethod
    def _is_api(request) -> bool:
        return urlparse(request.url).path.startswith(API_PREFIXES)

    def _sent(self, request) -> None:
        self.in_flight += self._is_api(request)

    def _failed(self, request) -> None:
        self.in_flight -= self._is_api(request)

    def _finished(self, request) -> None:
        if not self._is_api(request):
            return
        self.in_flight -= 1
        timing, sizes = request.timing, request.sizes()
        self.calls.append({"path": urlparse(request.url).path,
                           "server_ms": timing["responseStart"] - timing["requestStart"],
                           "bytes": sizes["responseBodySize"]})

    def wait_quiet(self, timeout_s: float = 30) -> None:
        """Until no API call has been in flight for QUIET_S (the UI keeps polling some, so
        Playwright's networkidle may never come)."""
        deadline, quiet_since = time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(100)
            if self.in_flight > 0:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self.QUIET_S:
                return

    def take(self) -> list[dict]:
        calls, self.calls = self.calls, []
        return calls


def measure_page(page, log: RequestLog, url: str, shown: str) -> dict:
    log.take()
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit")
    try:
        page.wait_for_function(shown, timeout=PAGE_TIMEOUT_MS, polling=50)
        seconds = time.perf_counter() - t0
    except PlaywrightTimeout:  # recorded as such; the other pages are still measured
        seconds = float("nan")
    log.wait_quiet()  # the calls still in flight belong to the page too
    calls = log.take()
    return {"s": seconds, "calls": len(calls), "bytes": sum(c["bytes"] for c in calls),
            "max_server_ms": max((c["server_ms"] for c in calls), default=0.0),
            "sum_server_ms": sum(c["server_ms"] for c in calls), "requests": calls}


def _logged_in_context(browser, endpoint: Endpoint, login: str):
    """A browser context holding the endpoint's login. ``header``: the Authorization header goes
    with every request, as a browser sends it once its user has logged in. ``challenge``:
    Playwright's http_credentials, which let each request be refused 401 and answer through the
    DevTools protocol (what these runs measured before 2026-11-30 19:00; it cost ours' run page
    ~0.14 s warm, stock needing no login)."""
    if not endpoint.auth:
        return browser.new_context(viewport=VIEWPORT)
    if login == "challenge":
        return browser.new_context(http_credentials=dict(zip(("username", "password"), endpoint.auth)),
                                   viewport=VIEWPORT)
    token = base64.b64encode(":".join(endpoint.auth).encode()).decode()
    return browser.new_context(extra_http_headers={"Authorization": f"Basic {token}"}, viewport=VIEWPORT)


def browse(browser, endpoint: Endpoint, name: str, url: str, screenshot: bool = True, login: str = "header") -> dict:
    """One page cold (a new browser context: no HTTP cache, no local storage) and then warm (the
    same context, the page loaded again from a blank tab, the UI's bundle in cache)."""
    context = _logged_in_context(browser, endpoint, login)
    page = context.new_page()
    log = RequestLog(page)
    cold = measure_page(page, log, url, Pages.shown[name])
    page.goto("about:blank")
    warm = measure_page(page, log, url, Pages.shown[name])
    shot = None
    if screenshot:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOT_DIR / f"{name.replace(' ', '_')}_{endpoint.name}.png"
        _small_screenshot(page, shot)
    context.close()
    print(f"  {endpoint.name:5} {name:16} cold {cold['s']:.2f} s, warm {warm['s']:.2f} s, "
          f"{warm['calls']} calls, {warm['bytes'] / 1e6:.2f} MB, slowest call {warm['max_server_ms']:.0f} ms",
          flush=True)
    return {"cold": cold, "warm": warm, "screenshot": shot and str(shot.relative_to(RESULTS_DIR))}


def run_page_variants(browser, stack: Stack, experiment_id: str, run_ids: list[str], rounds: int) -> dict:
    """The run page on stock, ours, RUN_PAGE_VARIANTS and LOGIN_ON_CHALLENGE, in turn, ``rounds``
    times: medians of the time until shown and of each of its calls' server time, cold and warm."""
    endpoints = list(stack.endpoints)
    for name, (base, setting) in RUN_PAGE_VARIANTS.items():
        slug = name.replace(", ", "_").replace(" ", "_")
        endpoints.append(stack.start_stock_variant(slug, setting) if base == "stock"
                         else stack.start_variant(slug, setting))
    visits = [(name, endpoint, "header") for name, endpoint in zip(["stock", "ours", *RUN_PAGE_VARIANTS], endpoints)]
    visits.append((LOGIN_ON_CHALLENGE, stack.ours, "challenge"))
    samples = {name: [] for name, _, _ in visits}
    for _ in range(rounds):
        for name, endpoint, login in visits:
            url = Pages(endpoint, experiment_id, run_ids).urls["run page"]
            samples[name].append(browse(browser, endpoint, "run page", url, screenshot=False, login=login))
    results = {}
    for name, visits in samples.items():
        results[name] = {}
        for state in ("cold", "warm"):
            calls_by_path = {}
            for visit in visits:
                for call in visit[state]["requests"]:
                    calls_by_path.setdefault(call["path"], []).append(call["server_ms"])
            results[name][state] = {
                "s": statistics.median(v[state]["s"] for v in visits),
                "sum_server_ms": statistics.median(v[state]["sum_server_ms"] for v in visits),
                "server_ms_by_path": {path: statistics.median(ms) for path, ms in calls_by_path.items()},
                "rounds": rounds}
    return results


def _small_screenshot(page, path: Path) -> None:
    from PIL import Image

    page.screenshot(path=str(path))
    with Image.open(path) as image:
        image.reduce(2).convert("RGB").quantize(colors=128).save(path, optimize=True)  # ~40 kB, not ~100


def time_call(session: requests.Session, method: str, url: str, repeats: int, **kwargs) -> dict:
    samples, size = [], 0
    for _ in range(repeats + 1):  # the first call warms the server's connection pools
        t0 = time.perf_counter()
        response = session.request(method, url, timeout=600, **kwargs)
        samples.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
        size = len(response.content)
    return {"p50_ms": statistics.median(samples[1:]), "max_ms": max(samples[1:]), "bytes": size,
            "n": repeats}


def time_chart_view_burst(endpoint: Endpoint, api: str, run_ids: list[str], repeats: int) -> dict:
    """What the chart view sends at once: one get-history-bulk-interval per training curve, each
    on its own connection; the time until the last is answered."""
    sessions = []
    for _ in LONG_CURVES:
        session = requests.Session()
        session.auth = endpoint.auth
        sessions.append(session)

    def fetch(session_and_curve):
        session, curve = session_and_curve
        response = session.get(f"{api}/metrics/get-history-bulk-interval", timeout=600,
                               params={"run_ids": run_ids, "metric_key": curve, "max_results": HISTORY_POINTS})
        response.raise_for_status()
        return len(response.content)

    samples, size = [], 0
    with ThreadPoolExecutor(len(LONG_CURVES)) as pool:
        for _ in range(repeats + 1):  # the first burst warms every session's connection
            t0 = time.perf_counter()
            size = sum(pool.map(fetch, zip(sessions, LONG_CURVES)))
            samples.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": statistics.median(samples[1:]), "max_ms": max(samples[1:]), "bytes": size, "n": repeats}


def api_calls(endpoint: Endpoint, experiment_ids: list[str], run_ids: list[str], repeats: int) -> dict:
    session = requests.Session()
    session.auth = endpoint.auth
    api = f"{endpoint.url}/ajax-api/2.0/mlflow"
    ten_runs = run_ids[-10 * EXPERIMENTS::EXPERIMENTS][-10:]  # 10 runs of one experiment
    curve = LONG_CURVES[0]
    return {
        "get-history-bulk-interval (10 runs, 1 curve)": time_call(
            session, "GET", f"{api}/metrics/get-history-bulk-interval", repeats,
            params={"run_ids": ten_runs, "metric_key": curve, "max_results": HISTORY_POINTS}),
        f"chart view burst: {len(LONG_CURVES)} of those at once, until the last answer": time_chart_view_burst(
            endpoint, api, ten_runs, repeats),
        "metrics/get-history (1 run, 1 curve)": time_call(
            session, "GET", f"{api}/metrics/get-history", repeats,
            params={"run_id": run_ids[-1], "metric_key": curve}),
        "runs/search param filter, metric order (2 000 runs)": time_call(
            session, "POST", f"{api}/runs/search", repeats,
            json={"experiment_ids": experiment_ids, "max_results": 100,
                  "filter": f"params.`{FILTER_PARAM}` = '{FILTER_VALUE}'",
                  "order_by": [f"metrics.`{SORT_METRIC}` DESC"]}),
    }


def check_stock_reads_it(endpoint: Endpoint, experiment_ids: list[str], run_ids: list[str]) -> None:
    """MLflow's own client, against stock MLflow, sees the populated runs as MLflow wrote them."""
    from mlflow import MlflowClient

    with endpoint.as_client():
        client = MlflowClient(tracking_uri=endpoint.url)
        run = client.get_run(run_ids[-1])
        assert len(run.data.params) == 200 and len(run.data.metrics) == 40 and len(run.data.tags) >= 10, run.data
        assert len(run.inputs.dataset_inputs) == 2, run.inputs
        history = client.get_metric_history(run_ids[-1], LONG_CURVES[0])
        assert run.data.metrics[LONG_CURVES[0]] == max(history, key=lambda m: (m.step, m.timestamp)).value
        page = client.search_runs(experiment_ids, f"params.`{FILTER_PARAM}` = '{FILTER_VALUE}'",
                                  order_by=[f"metrics.`{SORT_METRIC}` DESC"], max_results=100)
        assert page and all(r.data.params[FILTER_PARAM] == FILTER_VALUE for r in page)
        values = [r.data.metrics[SORT_METRIC] for r in page]
        assert values == sorted(values, reverse=True)
        assert len(client.search_registered_models(max_results=1000)) == len(run_ids) // 20


def main() -> None:
    args = parse_args(__doc__, lambda p: (
        p.add_argument("--steps", type=int, help="points per training curve (default 1000, --quick 200)"),
        p.add_argument("--runs", type=int, default=2000),
        p.add_argument("--api-only", action="store_true",
                       help="only the REST calls behind the pages (no browser): a store change's own figure"),
        p.add_argument("--run-page-variants", type=int, default=0, metavar="N",
                       help="then the run page N times on stock, ours and the variants, medians")))
    steps = args.steps or (1000 if args.full else 200)
    repeats = 10 if args.full else 3
    from playwright.sync_api import sync_playwright

    with Stack() as stack:
        workload = populate(stack.ours_server.env["MLFLOW_BACKEND_STORE_URI"], stack.tracking_db, steps, args.runs)
        print(f"populated {args.runs} runs × {steps} steps: {workload.metric_rows:,} metric rows "
              f"in {workload.seconds:.0f} s", flush=True)
        check_stock_reads_it(stack.stock, workload.experiment_ids, workload.run_ids)
        experiment_id = workload.experiment_ids[-1]
        experiment_runs = workload.run_ids[EXPERIMENTS - 1::EXPERIMENTS]
        browser_results, api_results, variant_results = {}, {}, {}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            # Page by page, stock then ours: load from the machine's other work falls on both alike.
            for name in () if args.api_only else Pages.shown:
                for endpoint in stack.endpoints:
                    url = Pages(endpoint, experiment_id, experiment_runs).urls[name]
                    browser_results.setdefault(endpoint.name, {})[name] = browse(browser, endpoint, name, url)
            if args.run_page_variants:
                variant_results = run_page_variants(browser, stack, experiment_id, experiment_runs,
                                                    args.run_page_variants)
            browser.close()
        for endpoint in stack.endpoints:
            api_results[endpoint.name] = api_calls(endpoint, workload.experiment_ids, workload.run_ids, repeats)
        tracebacks = {e.name: stack.server_log_tracebacks(e) for e in stack.endpoints}

    tables = [_api_table(api_results, args.runs, steps)]
    if browser_results:
        tables.insert(0, _browser_table(browser_results, args.runs, steps))
    if variant_results:
        tables.append(_variants_table(variant_results))
    save("ui_speed_api" if args.api_only else "ui_speed", args.full, tables, {
        "runs": args.runs, "steps": steps, "metric_rows": workload.metric_rows,
        "populate_s": workload.seconds, "browser": browser_results, "api": api_results,
        "run_page_variants": variant_results, "server_tracebacks": tracebacks})


def _browser_table(results: dict, runs: int, steps: int) -> str:
    stock, ours = results["stock"], results["ours"]
    rows = []
    for name in stock:
        for state in ("cold", "warm"):
            s, o = stock[name][state], ours[name][state]
            rows.append([name, state, f"{s['s']:.2f}", f"{o['s']:.2f}", ratio(s["s"], o["s"]),
                         f"{s['calls']} / {o['calls']}", f"{s['bytes'] / 1e3:.0f} / {o['bytes'] / 1e3:.0f}",
                         f"{s['max_server_ms']:.0f} / {o['max_server_ms']:.0f}",
                         f"{s['sum_server_ms']:.0f} / {o['sum_server_ms']:.0f}"])
    return print_table(
        f"Browser (Chromium): navigation until shown, {runs} runs × 40 metrics (8 curves × {steps} steps)",
        ["page", "cache", "stock s", "ours s", "stock/ours", "REST calls stock / ours", "kB stock / ours",
         "slowest call ms stock / ours", "server ms total stock / ours"], rows)


def _api_table(results: dict, runs: int, steps: int) -> str:
    stock, ours = results["stock"], results["ours"]
    rows = [[name, f"{stock[name]['p50_ms']:.0f}", f"{ours[name]['p50_ms']:.0f}",
             ratio(stock[name]["p50_ms"], ours[name]["p50_ms"]),
             f"{stock[name]['bytes'] / 1e3:.0f} / {ours[name]['bytes'] / 1e3:.0f}"] for name in stock]
    return print_table(f"REST calls behind the pages, p50 of {next(iter(stock.values()))['n']} ({runs} runs, "
                       f"curves of {steps} steps)",
                       ["call", "stock p50 ms", "ours p50 ms", "stock/ours", "kB stock / ours"], rows)


def _variants_table(results: dict) -> str:
    """One row per server and cache state; a column per call the run page makes (server ms)."""
    paths = sorted({path for server in results.values() for state in server.values()
                    for path in state["server_ms_by_path"]})
    rows = []
    for name, states in results.items():
        for state, figures in states.items():
            by_path = figures["server_ms_by_path"]
            rows.append([name, state, f"{figures['s']:.2f}", f"{figures['sum_server_ms']:.0f}",
                         *(f"{by_path[p]:.0f}" if p in by_path else "—" for p in paths)])
    rounds = next(iter(results.values()))["warm"]["rounds"]
    short = [p.replace("/ajax-api/2.0/mlflow/", "").replace("/ajax-api/3.0/mlflow/", "3.0 ") for p in paths]
    return print_table(f"Run page, median of {rounds} visits each, servers in turn (server ms per call)",
                       ["server", "cache", "shown s", "server ms total", *short], rows)


if __name__ == "__main__":
    main()
