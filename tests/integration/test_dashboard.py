"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against the real
stack: every page shows its data, a page follows a run without being reloaded, a task is
cancelled from its page, and with ODDISH_API_KEY set no page shows anything before the login.
The API docs render with no request leaving the machine. A failing test leaves a screenshot in
its tmp dir and prints where."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from temporalio.client import Client

from helpers import local, poll, serve_api, sleeping, submit, wait_for_task, wait_until_running
from oddish.queue import get_task_with_trials

pytestmark = pytest.mark.timeout(420)

CHROMIUM = "/usr/bin/chromium"
TESTS_DIR = Path(__file__).resolve().parents[1]
RECORDER = "trajectory_agent:TrajectoryAgent"
# Long enough to stay on the page while a browser looks, short enough for a test. Sleeps are
# counted machine-wide (pgrep) while other test files run: durations of this file's own.
SLEEP_SEC = "6.25"
LONG_SLEEP_SEC = "301.25"
WAIT_MS = 120_000


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    # No skip: a machine without chromium fails these tests (.ci/run installs it).
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        yield launched
        await launched.close()


class Offline:
    """Requests the pages made to any other host than this machine: each is refused."""

    def __init__(self) -> None:
        self.elsewhere: list[str] = []


@pytest.fixture
async def page(
    browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Page]:
    context = await browser.new_context()
    offline = Offline()

    async def only_this_machine(route, req) -> None:
        if urlsplit(req.url).hostname in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            offline.elsewhere.append(req.url)
            await route.abort()

    await context.route("**/*", only_this_machine)
    opened = await context.new_page()
    opened.set_default_timeout(30_000)
    opened.offline = offline  # type: ignore[attr-defined]
    yield opened
    failed = getattr(request.node, "report_call", None)
    if failed is not None and failed.failed:
        shot = tmp_path / "failure.png"
        await opened.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failing page ({opened.url}): {shot}")
    await context.close()


def unique(label: str) -> str:
    return f"{label}-{secrets.token_hex(3)}"


async def test_docs_render_from_local_assets_only(api: str, page: Page) -> None:
    async with httpx.AsyncClient(base_url=api) as http:
        for path in ("/docs", "/redoc"):
            html = (await http.get(path)).text
            assert not re.search(r"(src|href)=[\"']?(https?:)?//", html), html
            for asset in re.findall(r"(?:src|href)=[\"']?(/[^\"' >]+)", html):
                assert (await http.get(asset)).status_code == 200, asset

    await page.goto(f"{api}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("oddish")
    await expect(page.locator(".opblock-summary-path").first).to_be_visible()
    await page.goto(f"{api}/redoc")
    await expect(page.get_by_text("Upload a task").first).to_be_visible()
    # ReDoc's sidebar asks for its logo after the first render: give it the time to.
    await page.wait_for_timeout(1000)
    assert page.offline.elsewhere == []  # type: ignore[attr-defined]


async def test_a_page_follows_a_run_and_every_page_shows_its_data(
    api: str, start_worker, temporal_client: Client, page: Page
) -> None:
    start_worker(PYTHONPATH=str(TESTS_DIR))
    experiment = unique("<b>dash</b>")
    slow_id = await submit(
        temporal_client,
        "sleep",
        local("oracle", agent_env={"ODDISH_SLEEP_SECONDS": SLEEP_SEC}),
        experiment_name=experiment,
    )

    # The task's page, opened before its trial ends, shows it end without a reload.
    await page.goto(f"{api}/ui/tasks/{slow_id}")
    await page.evaluate("window.notReloaded = true")
    trial_row = page.locator("tr[data-trial]")
    await expect(trial_row).to_have_count(1)
    await expect(page.locator("#task-status")).to_have_text("completed", timeout=WAIT_MS)
    await expect(trial_row.locator(".status")).to_have_text("success")
    await expect(trial_row.locator(".result")).to_have_text("passed")
    await expect(trial_row).to_contain_text("1.000")
    assert await page.evaluate("window.notReloaded") is True

    slow = await get_task_with_trials(slow_id)
    task_id = await submit(
        temporal_client,
        "hello-pass",
        local(RECORDER),
        local("oracle"),
        experiment_id=slow["experiment_id"],
    )
    # Two trials that score 0: oracle/- then has 2 passed of 4 scored over 3 tasks.
    fail_id = await submit(
        temporal_client,
        "always-fail",
        local("oracle", n_trials=2),
        experiment_id=slow["experiment_id"],
    )
    task = await wait_for_task(temporal_client, task_id)
    await wait_for_task(temporal_client, fail_id)
    experiment_id = task["experiment_id"]
    recorder = next(t for t in task["trials"] if t["agent"] == RECORDER)

    # Experiments: name (shown as text, never as markup), tasks, trials done / total, pass@1
    # (passed over scored: 2 of the oracle's 4 and none of the recorder's 1).
    await page.goto(f"{api}/ui/")
    row = page.locator(f'tr[data-experiment="{experiment_id}"]')
    await expect(row).to_contain_text(experiment)
    assert await row.locator("b").count() == 0
    await expect(row.locator("td").nth(2)).to_have_text("3")
    await expect(row.locator(".done")).to_have_text("5 / 5")
    await expect(row.locator("td.pass-at-1")).to_have_text("40% 2 / 5")
    await expect(row.locator("td").nth(5)).to_have_text("0")
    await expect(page.locator("p.hint").first).to_contain_text("trials passed over trials scored")

    # An experiment: per agent/model scores, and the task x agent/model matrix.
    await row.locator("a").click()
    await expect(page.locator("h1")).to_have_text(experiment)
    oracle = page.locator('tr[data-key="oracle/-"]')
    await expect(oracle.locator("td").nth(1)).to_have_text("4 (4)")
    # pass@1 2/4 with its Wilson 95% interval [0.150, 0.850].
    await expect(oracle.locator("td.pass-at-1")).to_have_text("50% [15% – 85%]")
    # pass@k (Chen et al.): k=1 weighs the 3 tasks alike (1, 1, 0); k=2 only always-fail has
    # 2 scored trials, none passed.
    await expect(oracle.locator("td.pass-at-k .passk")).to_have_text(["@1 67%", "@2 0%"])
    await expect(oracle.locator("td").nth(4)).to_have_text("0.500")
    await expect(oracle.locator("td.errors")).to_have_text("-")
    recorded = page.locator(f'tr[data-key="{RECORDER}/-"]')
    await expect(recorded.locator("td.pass-at-1")).to_have_text("0% [0% – 79%]")
    await expect(recorded.locator("td.pass-at-k .passk")).to_have_text(["@1 0%"])
    await expect(page.locator("#overall")).to_contain_text("5 scored · 2 passed")
    # Columns by agent/model in order: oracle/-, then the recorder.
    cell = page.locator(f'tr[data-task="{task_id}"] td.cell').nth(1)
    await expect(cell).to_have_text("0 / 1")
    await expect(cell).to_have_class(re.compile("rate-0"))
    await expect(page.locator(f'tr[data-task="{fail_id}"] td.cell').nth(0)).to_have_text("0 / 2")

    # The cell leads to that agent's trials of the task.
    await cell.locator("a").click()
    await expect(page.locator("h1")).to_have_text("hello-pass")
    await expect(page.locator("tr[data-trial]")).to_have_count(1)
    trial_row = page.locator(f'tr[data-trial="{recorder["id"]}"]')
    await expect(trial_row).to_contain_text("task_failure")
    # A reward of 0: the trial ran to its end (success) and failed.
    await expect(trial_row.locator(".result")).to_have_text("failed")
    await expect(page.locator("#task-status")).to_have_text("completed")
    files = page.locator("ul.files")
    await expect(files).to_contain_text("instruction.md")
    await expect(files).to_contain_text("tests/test.sh")

    # A trial: phases, attempts, logs and the trajectory on the page, result.json, the files.
    await trial_row.locator("a").click()
    await expect(page.locator("#trial-outcome")).to_have_text("task_failure")
    await expect(page.locator("#trial-result")).to_have_text("failed")
    for phase in ("environment", "agent", "verifier"):
        await expect(page.locator(f'.phase[data-phase="{phase}"]')).to_have_count(1)
    await expect(page.locator("table.attempts tbody tr")).to_have_count(1)
    verifier = page.locator('details.log[data-path^="verifier/"]').first
    await expect(verifier).to_be_visible()
    big = page.locator('details.log[data-path="agent/big.log"]')
    await expect(big).to_contain_text("line 00000000 of a long agent log")
    await expect(big.locator(".cut")).to_contain_text("bytes not shown")
    steps = page.locator("ol.steps li")
    await expect(steps).to_have_count(2)
    await expect(steps.nth(1)).to_contain_text("hello, ünïcode ✓")
    await expect(page.locator("pre.result-json")).to_contain_text('"verifier_result"')
    download = page.locator('ul.files a.download[href*="agent/page.html"]')
    await expect(download).to_have_count(1)
    async with httpx.AsyncClient(base_url=api) as http:
        served = await http.get(await download.get_attribute("href") or "")
        assert served.status_code == 200
        assert "sandbox" in served.headers["content-security-policy"]

    # Queues: a limit changed from the page (running and waiting: see the cancel test).
    key = unique("dashboard/model")
    await page.goto(f"{api}/ui/queues")
    form = page.locator("section form.set-limit")
    await form.locator('input[name="queue_key"]').fill(key)
    await form.locator('input[name="limit"]').fill("3")
    page.once("dialog", lambda dialog: dialog.accept())
    await form.locator("button").click()
    await expect(page.locator(f'tr[data-queue="{key}"] .limit')).to_have_text("3")
    async with httpx.AsyncClient(base_url=api) as http:
        assert (await http.get("/limits")).json()["queues"][key]["limit"] == 3
    assert page.offline.elsewhere == []  # type: ignore[attr-defined]


async def test_a_task_is_cancelled_from_its_page_after_confirmation(
    api: str, start_worker, temporal_client: Client, page: Page
) -> None:
    start_worker()
    model = unique("dashboard-model")
    async with httpx.AsyncClient(base_url=api) as http:
        put = await http.put(f"/limits/{model}", json={"limit": 1})
        assert put.status_code == 200
    queue_key = put.json()["queue_key"]
    task_id = await submit(
        temporal_client,
        "sleep",
        local(
            "oracle",
            n_trials=2,
            model=model,
            agent_env={"ODDISH_SLEEP_SECONDS": LONG_SLEEP_SEC},
        ),
        experiment_name=unique("cancel"),
    )
    running = await wait_until_running(task_id, timeout=120)
    assert running["trials"][0]["queue_key"] == queue_key

    # The queue's limit, its running trial and the one waiting behind it.
    await page.goto(f"{api}/ui/queues")
    row = page.locator(f'tr[data-queue="{queue_key}"]')
    await expect(row.locator("td").nth(1)).to_have_text("1")
    await expect(row.locator("td").nth(2)).to_have_text("1")
    await expect(row.locator("td").nth(3)).to_have_text("1")

    await page.goto(f"{api}/ui/tasks/{task_id}")

    # Declined: nothing is posted.
    page.once("dialog", lambda dialog: dialog.dismiss())
    await page.locator("#cancel-task").click()
    await expect(page.locator("#task-status")).to_have_text("running")
    assert (await get_task_with_trials(task_id))["status"] == "running"

    page.once("dialog", lambda dialog: dialog.accept())
    await page.locator("#cancel-task").click()
    await expect(page.locator("#task-status")).to_have_text("cancelled", timeout=WAIT_MS)
    task = await get_task_with_trials(task_id)
    assert task["status"] == "cancelled"
    assert {t["status"] for t in task["trials"]} == {"cancelled"}
    await poll(
        lambda: _no_sleeper(LONG_SLEEP_SEC), timeout=60, what="the trial's sandbox to be gone"
    )


async def _no_sleeper(seconds: str) -> bool:
    return sleeping(seconds) == 0


@pytest.fixture
def keyed_api(oddish_env: dict[str, str], task_queue: str, work_dir: Path) -> AsyncIterator:
    key = secrets.token_urlsafe(16)
    env = {**os.environ, **oddish_env, "ODDISH_TEMPORAL_TASK_QUEUE": task_queue}
    env["ODDISH_API_KEY"] = key
    process, url = serve_api(env, work_dir / f"api-keyed-{task_queue}.log", "--no-workers")
    yield url, key
    process.terminate()
    process.wait(timeout=20)


async def test_with_a_key_no_page_shows_data_before_login(
    keyed_api: tuple[str, str], temporal_client: Client, page: Page
) -> None:
    api, key = keyed_api
    experiment = unique("secret-experiment")
    task_id = await submit(temporal_client, "hello-pass", local(), experiment_name=experiment)
    task = await get_task_with_trials(task_id)
    trial_id = task["trials"][0]["id"]
    experiment_id = task["experiment_id"]
    secrets_shown = (experiment, task_id, trial_id, "hello-pass")
    # The login form carries the page asked for (its URL, ids and all) to return to it.
    data = (experiment, "hello-pass")

    pages = [
        "/",
        "/ui/",
        f"/ui/experiments/{experiment_id}",
        f"/ui/tasks/{task_id}",
        f"/ui/trials/{trial_id}",
        "/ui/queues",
    ]
    for path in pages:
        await page.goto(f"{api}{path}")
        await expect(page.locator('input[name="key"]')).to_be_visible()
        content = await page.content()
        assert not any(s in content for s in data), path
        shown = await page.locator("body").inner_text()
        assert not any(s in shown for s in secrets_shown), path
    for path in [f"/ui/tasks/{task_id}?fragment=1", f"/tasks/{task_id}", "/limits"]:
        answer = await page.request.get(f"{api}{path}")
        assert answer.status == 401, path
        text = await answer.text()
        assert not any(s in text for s in secrets_shown), path

    # Actions too: nothing is cancelled without the session.
    refused = await page.request.post(f"{api}/ui/tasks/{task_id}/cancel", headers={"Origin": api})
    assert refused.status == 401
    assert (await get_task_with_trials(task_id))["status"] != "cancelled"

    await page.goto(f"{api}/ui/tasks/{task_id}")
    await page.locator('input[name="key"]').fill("not the key")
    await page.locator("form.login button").click()
    await expect(page.locator("#login-error")).to_be_visible()
    content = await page.content()
    assert not any(s in content for s in data)

    await page.locator('input[name="key"]').fill(key)
    await page.locator("form.login button").click()
    # Back where the login started, with the data.
    await expect(page.locator("h1")).to_have_text("hello-pass")
    await expect(page.locator(f'tr[data-trial="{trial_id}"]')).to_be_visible()
    cookie = next(c for c in await page.context.cookies() if c["name"] == "oddish_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert key not in cookie["value"]
    # The session opens the API's reads (a trial's files link), not its writes.
    assert (await page.request.get(f"{api}/tasks/{task_id}")).status == 200
    assert (await page.request.post(f"{api}/tasks/{task_id}/cancel")).status == 401
    # A form of another site is refused, session or not.
    foreign = await page.request.post(
        f"{api}/ui/tasks/{task_id}/cancel", headers={"Origin": "http://evil.example"}
    )
    assert foreign.status == 403
    assert (await get_task_with_trials(task_id))["status"] != "cancelled"

    await page.locator("form.logout button").click()
    await page.goto(f"{api}/ui/tasks/{task_id}")
    await expect(page.locator('input[name="key"]')).to_be_visible()
