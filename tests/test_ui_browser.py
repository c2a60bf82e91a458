"""The MLflow UI and the report as a researcher meets them, in a real headless browser.

Debian's ``chromium`` (``/usr/bin/chromium``, installed by ``.ci/run``), driven by Playwright, opens a real
``mlflow ui`` (started by ``python -m seqexp.ui`` on 127.0.0.1, as ``make ui`` does) over the store of a real
tiny sweep (tiny-bert, 150 CoNLL-2003 sentences, 1 epoch, freeze=last,unfreeze × optim=adam,sgd: 4 jobs), and
the report that ``python -m seqexp.report`` wrote of it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seqexp.ui import CHROMIUM_ARGS, free_port, serve
from tests import warm
from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EXPERIMENT = "ui"
JOBS = ["model=tiny-bert", "freeze=last,unfreeze", "optim=adam,sgd"]
TIMEOUT_MS = 60_000
# The runs table is an ag-grid: run names in the left-pinned rows, the other columns in the centre rows
# (the same `row-index`).
NAMES, VALUES = ".ag-pinned-left-cols-container", ".ag-center-cols-container"

if not Path(CHROMIUM).is_file():
    pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run installs it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = warm.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def study(tmp_path_factory, mini_conll):
    """A real sweep, its report, and the MLflow UI over its store; yields what the tests open."""
    cwd = tmp_path_factory.mktemp("ui-study")
    uri = f"sqlite:///{cwd / 'mlruns.db'}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    _run(cwd, "-m", "seqexp.run", "-m", *JOBS, f"dataset.data_dir={mini_conll}", "trainer.max_epochs=1",
         "trainer.batch_size=16", "trainer.num_threads=1", f"tracking.experiment={EXPERIMENT}")
    _run(cwd, "-m", "seqexp.report", EXPERIMENT, "--uri", uri, "--out", str(cwd / "report"), "--bootstrap", "20",
         "--ui-url", base)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("seqexp.role") == "sweep")
    children = [r for r in runs if r.data.tags.get("seqexp.role") == "job"]
    assert len(children) == 4

    with serve(uri, cwd / "ui.log", env={**os.environ, "PYTHONPATH": str(REPO)}, port=port) as urls:
        yield {"cwd": cwd, "base": base, "landing": urls["runs table"], "compare": urls["comparison"],
               "parent": parent, "children": children, "experiment_id": exp.experiment_id,
               "report": cwd / "report" / "report.html", "pgid": int(urls["pgid"])}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1100})  # a new user: empty local storage
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def test_printed_url_lands_on_the_runs_table_with_the_jobs_nested_under_the_parent(study, page):
    parent = study["parent"]
    assert study["landing"].endswith(f"#/experiments/{study['experiment_id']}?workflowType=machine_learning")
    page.goto(study["landing"])
    page.get_by_text("Run Name").first.wait_for()  # the runs table, not the GenAI overview
    assert page.get_by_text("Model training").first.is_visible()
    rows = page.locator(f"{NAMES} .ag-row")
    row = rows.filter(has_text=parent.info.run_name[:20])
    row.wait_for()
    assert rows.count() == 1  # the jobs are nested: only the parent is listed
    assert parent.info.run_name.startswith(f"{EXPERIMENT}: freeze=last,unfreeze optim=adam,sgd")
    row.locator("button").first.click()  # expand it
    for child in study["children"]:
        rows.filter(has_text=child.info.run_name).wait_for()
    assert rows.count() == 5


def test_parent_run_page_shows_the_sweep_summary(study, page):
    from seqexp.tracking import run_url

    parent, children = study["parent"], study["children"]
    best = max(children, key=lambda r: r.data.metrics["test_f1"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.params == {"freeze": "last,unfreeze", "optim": "adam,sgd"}
    assert parent.data.metrics["jobs_finished"] == 4 and parent.data.metrics["jobs_failed"] == 0
    page.goto(run_url(study["base"], study["experiment_id"], parent.info.run_id))
    page.get_by_text(f"Sweep of experiment {EXPERIMENT}").first.wait_for()  # its description
    for text in ("best_test_f1", "jobs_finished", "last,unfreeze", best.info.run_id):
        assert page.get_by_text(text).first.is_visible(), text
    page.get_by_role("tab", name="Artifacts").first.click()
    page.get_by_text("report", exact=True).first.wait_for()  # make report attached the report


def test_comparison_plots_test_f1_against_freeze_for_every_job(study, page):
    page.goto(study["compare"])
    page.get_by_text("Parallel Coordinates").first.wait_for()
    page.get_by_text(f"{len(study['children'])} matching runs").wait_for()  # every job, not the parent
    # Parallel coordinates draws its axes (the params and test_f1) and their values as SVG text, once loaded.
    page.wait_for_function("""() => { const t = [...document.querySelectorAll('svg text')].map(e => e.textContent);
                                      return ['model', 'freeze', 'optim', 'test_f1'].every(k => t.includes(k)); }""")
    axes = {t.strip() for t in page.eval_on_selector_all("svg text", "ts => ts.map(t => t.textContent || '')")}
    assert {"model", "freeze", "optim", "test_f1"} <= axes, axes
    assert {"last", "unfreeze", "adam", "sgd"} <= axes, axes
    # test_f1 per run: one bar per job, each named in the chart's legend.
    for child in study["children"]:
        assert page.get_by_text(child.info.run_name).count() >= 2  # the runs list and a chart legend


def test_test_f1_is_a_column_with_one_value_per_job(study, page):
    page.goto(study["compare"].replace("compareRunsMode=CHART", "compareRunsMode=TABLE"))
    page.locator("[col-id='metrics.`test_f1`']").first.wait_for()
    values = {}
    for child in study["children"]:
        row = page.locator(f"{NAMES} .ag-row", has_text=child.info.run_name).first
        row.wait_for()
        cells = page.locator(f"{VALUES} .ag-row[row-index='{row.get_attribute('row-index')}']")
        values[child.info.run_name] = cells.locator("[col-id='metrics.`test_f1`']").inner_text().strip()
    for child in study["children"]:
        shown = float(values[child.info.run_name])
        assert shown == pytest.approx(child.data.metrics["test_f1"], abs=1e-6), values


def test_report_images_load_and_every_run_link_opens_its_run(study, page):
    report = study["report"]
    page.goto(report.as_uri())
    images = page.locator("img")
    assert images.count() >= 3
    broken = page.evaluate("() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                           ".map(i => i.alt)")
    assert broken == []
    links = sorted(set(page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")))
    runs = [link for link in links if "/runs/" in link]
    ids = {r.info.run_id for r in study["children"]} | {study["parent"].info.run_id}
    assert {re.search(r"/runs/([0-9a-f]+)", link).group(1) for link in runs} == ids
    assert all(link.startswith(study["base"] + "/#/experiments/") for link in runs)
    for link in runs:
        run_id = re.search(r"/runs/([0-9a-f]+)", link).group(1)
        page.goto(link)
        page.get_by_text(run_id).first.wait_for()  # the run's own page ("Run ID"), not "run not found"
        assert page.get_by_text("Overview").first.is_visible()


def test_the_ui_starts_no_mlflow_job_workers(study):
    """MLflow's job execution (GenAI scorers, prompt optimisation; a pool of huey processes, each importing
    MLflow) is off in the UI seqexp starts (seqexp.server.mlflow_env): nothing in its process group runs huey."""
    group = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[2]) == study["pgid"]:
            group.append(cmdline)
    assert any("mlflow" in c for c in group), group  # the UI's own processes are seen
    assert not [c for c in group if "huey" in c], group
