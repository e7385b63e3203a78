"""The dashboard in a real browser against the whole stack (the Procfile's processes, the
simulator playing every peer): a run seen live from its first frame to its completion, and
a caller from an address that is not privileged let in only by the token form.

The first test also writes docs/dashboard.png, the README's picture of a run in progress."""

from __future__ import annotations

import re
import time
from pathlib import Path

import requests
from playwright.sync_api import Page, Response

from tests.blendgen import blend_with_range
from tests.browser.conftest import PageErrors
from tests.helpers import FIXTURES
from tests.stack import ROOT, Stack, platform

SOURCE = FIXTURES / "blend/blender-5.0/default_1_250.blend"
SCREENSHOT = ROOT / "docs" / "dashboard.png"
FRAMES = 240
# Four users at 0.2 s a frame: about 20 frames a second, a run of some 12 to 20 seconds.
KNOBS = {"users": 4, "frame_time": 0.2, "jitter": 0.05, "seed": 13}
TOKEN = "browser-test-admin-token-5d1e"
ETA_TEXT = re.compile(r"^ETA .+ \(80 %: .+ \u2013 .+\)$")


def dashboard_base(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.env['PORT']}/dashboard"


def start_workload(stack: Stack, tmp_path: Path, customer: str, object_id: str) -> None:
    blend = blend_with_range(SOURCE, tmp_path / "browser.blend", 1, FRAMES)
    stack.simulator.add_object(customer, object_id, blend)
    response = requests.post(
        f"{stack.api}/start-workload",
        data={"customer_id": customer, "object_id": object_id},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def grid_count(page: Page, state: str) -> int:
    return int(page.get_attribute("#grid", f"data-{state}") or 0)


def test_a_run_is_seen_live_until_it_completes(
    tmp_path: Path, page: Page, page_errors: PageErrors
) -> None:
    customer = "browser-cust"
    with platform(tmp_path, **KNOBS) as stack:
        stack.env.update(PRIVILEGED_IPS="127.0.0.1", ADMIN_TOKEN="", INITIAL_USER_COUNT="4")
        stack.start("web", "worker", "beat")
        base = dashboard_base(stack)
        snapshot_url = f"{base}/api/workloads/{customer}"
        answers: list[tuple[float, int, str | None]] = []

        def seen(response: Response) -> None:
            if response.url == snapshot_url:
                answers.append((time.monotonic(), response.status, response.headers.get("etag")))

        page.on("response", seen)
        start_workload(stack, tmp_path, customer, "browser-obj")
        opened = page.goto(f"{base}/{customer}")
        assert opened is not None
        assert opened.status == 200
        page.evaluate("() => { window.__sameDocument = true; }")

        # 1. The grid fills in: one cell a frame, rendered ones counted.
        page.wait_for_function(
            "() => Number(document.getElementById('grid').dataset.rendered) > 0", timeout=60_000
        )
        assert page.get_attribute("#grid", "data-total") == str(FRAMES)
        assert page.get_attribute("#grid", "data-cells") == str(FRAMES)
        assert page.locator("#grid .cell.s-rendered").count() > 0

        # 2. A thumbnail of a rendered frame arrives and decodes.
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('#thumbs img'))"
            ".some(img => img.complete && img.naturalWidth > 0)",
            timeout=30_000,
        )
        decoded = page.evaluate(
            "() => Array.from(document.querySelectorAll('#thumbs img'))"
            ".filter(img => img.complete && img.naturalWidth > 0)"
            ".map(img => [img.dataset.frame, new URL(img.src).pathname, img.naturalWidth])"
        )
        frame, path, width = decoded[0]
        assert 1 <= int(frame) <= FRAMES
        assert path.startswith("/dashboard/api/sessions/")
        assert path.endswith(f"/frames/{frame}/thumbnail")
        assert width > 0

        # 3. The ETA with its 80 % band, while the run is still going: the screenshot.
        page.wait_for_function(
            "() => document.getElementById('eta').dataset.basis === 'measured'"
            " && !document.getElementById('eta-band').hidden",
            timeout=60_000,
        )
        eta_text = page.text_content("#eta") or ""
        assert ETA_TEXT.match(eta_text), eta_text
        # For the picture: a third of the run done and a few previews in, still running.
        page.wait_for_function(
            f"() => Number(document.getElementById('grid').dataset.rendered) >= {FRAMES // 3}"
            " && Array.from(document.querySelectorAll('#thumbs img'))"
            ".filter(img => img.complete && img.naturalWidth > 0).length >= 4",
            timeout=60_000,
        )
        assert page.get_attribute("#workload", "data-status") == "running"
        assert grid_count(page, "rendered") < FRAMES
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # 4. The page reaches "completed" by itself.
        page.wait_for_function(
            "() => document.getElementById('workload').dataset.status === 'completed'",
            timeout=180_000,
        )
        completed_at = time.monotonic()
        assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"
        assert page.text_content("#status") == "completed"
        assert grid_count(page, "rendered") == FRAMES
        assert grid_count(page, "waiting") == 0
        assert page.text_content("#eta") == "Done"
        assert page.locator("#timeline li[data-kind='completed']").count() == 1

        # Nothing changes any more: the next polls are answered 304, without a body.
        deadline = completed_at + 20
        while time.monotonic() < deadline and not any(
            status == 304 and at > completed_at for at, status, _ in answers
        ):
            page.wait_for_timeout(250)
        statuses = [status for _, status, _ in answers]
        assert set(statuses) <= {200, 304}, statuses
        after = [(status, etag) for at, status, etag in answers if at > completed_at]
        assert any(status == 304 for status, _ in after), f"polls after completion: {after}"

        listed = page.goto(f"{base}/")
        assert listed is not None
        assert listed.status == 200
        row = page.locator(f"#workload-rows tr[data-customer='{customer}']")
        row.wait_for()
        assert row.get_attribute("data-status") == "completed"
        assert page_errors.errors == []


def test_a_caller_from_elsewhere_needs_the_token(tmp_path: Path, page: Page) -> None:
    with platform(tmp_path, embedded_broker=True) as stack:
        # The browser connects from 127.0.0.1, which this service does not trust.
        stack.env.update(PRIVILEGED_IPS="192.0.2.10/32", ADMIN_TOKEN=TOKEN)
        stack.start("web")
        base = dashboard_base(stack)

        refused = page.goto(f"{base}/")
        assert refused is not None
        assert refused.status == 403
        assert page.locator("form input[name='token']").count() == 1
        assert requests.get(f"{base}/api/workloads", timeout=5).status_code == 403

        page.fill("#token", "not-the-token")
        with page.expect_navigation() as wrong:
            page.click("button[type='submit']")
        assert wrong.value is not None
        assert wrong.value.status == 403
        assert page.locator("#login-refused").count() == 1

        page.fill("#token", TOKEN)
        with page.expect_navigation(url=f"{base}/") as right:
            page.click("button[type='submit']")
        assert right.value is not None
        assert right.value.status == 200
        page.wait_for_function("() => document.getElementById('workloads').dataset.count === '0'")
        assert page.locator("#no-workloads").is_visible()

        [cookie] = page.context.cookies()
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/dashboard"
        assert TOKEN not in cookie["value"]

        api = f"{base}/api/workloads"
        assert requests.get(api, timeout=5).status_code == 403
        with_cookie = requests.get(api, cookies={cookie["name"]: cookie["value"]}, timeout=5)
        assert with_cookie.status_code == 200
        assert with_cookie.json()["workloads"] == []
        bearer = requests.get(api, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert bearer.status_code == 200
