"""The dashboard of `tether server` in a real headless Chromium (Debian's, driven by
Playwright), against a real uvicorn server subprocess on a loopback port; the executions
are run by a real `tether worker`. Screenshots are kept under the test's tmp dir."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

import dashboard_flows
import tether
from helpers import plant, retry_until
from server_procs import Processes
from tether._core.positions import display

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def procs(db_url: str, tmp_path: Path) -> Iterator[Processes]:
    pool = Processes(db_url, tmp_path, "dashboard_flows", poll="0.02")
    yield pool
    pool.kill_all()
    for log in tmp_path.glob("server-*.log"):  # a page that failed to render says why here
        assert "Traceback" not in log.read_text(), log.read_text()


class Browser:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.shots = tmp_path / "screenshots"
        self.shots.mkdir()
        self._pw = sync_playwright().start()
        self._contexts: list[BrowserContext] = []

    def page(self, width: int = 1280, height: int = 900) -> Page:
        profile = self.tmp_path / f"chromium-{len(self._contexts)}"
        context = self._pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": width, "height": height},
        )
        context.set_default_timeout(30_000)
        self._contexts.append(context)
        return context.pages[0] if context.pages else context.new_page()

    def shot(self, page: Page, name: str) -> Path:
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        for context in self._contexts:
            context.close()
        self._pw.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); scripts/test does it")
    shown = Browser(tmp_path)
    yield shown
    shown.close()


def _waiting(client: tether.Client, execution_id: str) -> None:
    def waiting() -> bool:
        return client.summary(execution_id).status == tether.Status.WAITING

    retry_until(waiting, timeout=60, what=f"execution {execution_id} to wait for input")


def test_approving_in_the_inbox_finishes_the_execution_live_on_its_page(
    client: tether.Client, procs: Processes, browser: Browser, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    # The topic is markup: the page must show it as text.
    handle = dashboard_flows.approval.enqueue("<img src=x onerror=alert(1)>cats", str(gate))
    other = dashboard_flows.approval.enqueue("dogs")
    url = procs.server()
    procs.worker()
    _waiting(client, handle.id)
    _waiting(client, other.id)

    page = browser.page()
    page.goto(f"{url}/waits")
    card = page.locator(f"article.wait[data-execution='{handle.id}']")
    expect(card).to_contain_text("publish 'a draft about <img src=x onerror=alert(1)>cats'?")
    assert page.locator("article.wait .question img").count() == 0
    expect(page.locator("article.wait")).to_have_count(2)
    browser.shot(page, "inbox")

    card.get_by_role("button", name="Approve").click()
    page.wait_for_url(f"**/executions/{handle.id}?done=input")
    expect(page.locator(".notice")).to_contain_text("Input given")
    # The flow holds in `publish` until the gate exists: it is not finished yet.
    head = page.locator("#head")
    expect(head).not_to_have_attribute("data-status", "succeeded")
    page.evaluate("window.__sameDocument = true")
    gate.write_text("open")
    expect(page.locator("#head")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    expect(page.locator("#head")).to_contain_text("published a draft about")
    expect(page.locator("#timeline")).to_contain_text("publish")
    expect(page.locator("#timeline")).to_contain_text("by local")  # who answered
    assert page.evaluate("window.__sameDocument") is True  # updated in place, never reloaded
    browser.shot(page, "execution-succeeded")

    record = client.get(handle.id)
    assert record.result == "published a draft about <img src=x onerror=alert(1)>cats"
    assert [w.resolved_by for w in record.waits] == ["local"]
    # The other wait is still in the inbox; a deny answers it the other way.
    page.goto(f"{url}/waits")
    expect(page.locator("article.wait")).to_have_count(1)
    page.locator(f"article.wait[data-execution='{other.id}']").get_by_role(
        "button", name="Deny"
    ).click()
    page.wait_for_url(f"**/executions/{other.id}?done=input")
    assert tether.Client().handle(other.id).result(timeout=60) == "rejected"


def test_schema_form_shows_validation_errors_inline_and_then_takes_the_input(
    client: tether.Client, procs: Processes, browser: Browser
) -> None:
    handle = dashboard_flows.planning.enqueue("birds")
    url = procs.server()
    procs.worker()
    _waiting(client, handle.id)

    page = browser.page()
    page.goto(f"{url}/waits")
    form = page.locator("form[data-wait='plan']")
    form.get_by_label("Title").fill("Birds of the coast")
    form.get_by_label("Pages").fill("0")
    form.get_by_label("casual").check()
    form.get_by_role("button", name="Send").click()
    # The schema says pages >= 1: the error is shown next to that field, the rest kept.
    pages = page.locator(".field", has=page.get_by_label("Pages"))
    expect(pages.locator(".field-error")).to_contain_text("greater than or equal to 1")
    expect(pages).to_have_class(re.compile("invalid"))
    expect(page.get_by_label("Title")).to_have_value("Birds of the coast")
    expect(page.get_by_label("casual")).to_be_checked()
    browser.shot(page, "form-invalid")
    assert client.summary(handle.id).status == tether.Status.WAITING  # nothing was stored

    # Text that is no number is caught before the schema is asked.
    page.get_by_label("Pages").fill("many")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".field-error")).to_contain_text("'many' is not a whole number")

    page.get_by_label("Pages").fill("3")
    page.get_by_role("button", name="Send").click()
    page.wait_for_url(f"**/executions/{handle.id}?done=input")
    result = tether.Client().handle(handle.id).result(timeout=60)
    assert result == "Birds of the coast: 3 pages, casual"
    expect(page.locator("#head")).to_have_attribute("data-status", "succeeded", timeout=60_000)


def test_list_filters_by_status_and_flow_searches_by_id_and_pages(
    client: tether.Client, procs: Processes, browser: Browser
) -> None:
    quick = [dashboard_flows.quick.enqueue(n) for n in range(52)]
    planning = dashboard_flows.planning.enqueue("fish")
    url = procs.server()

    page = browser.page()
    page.goto(url)
    expect(page.locator("#counts")).to_contain_text("queued 53")
    expect(page.locator("table.executions tbody tr")).to_have_count(50)
    page.get_by_role("link", name="Older »").click()
    expect(page.locator("table.executions tbody tr")).to_have_count(3)
    shown = set(
        page.locator("table.executions tbody tr").evaluate_all(
            "rows => rows.map(r => r.dataset.id)"
        )
    )
    assert shown == {quick[0].id, quick[1].id, quick[2].id}  # the oldest: keyset pages

    page.goto(url)
    page.get_by_label("Flow").fill("planning")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("table.executions tbody tr")).to_have_count(1)
    expect(page.locator("table.executions")).to_contain_text(planning.id)
    expect(page.locator("#counts")).to_contain_text("all 1")  # counts follow the filters
    expect(page.locator("#counts")).to_contain_text("queued 1")

    page.goto(url)
    page.evaluate("window.__sameDocument = true")
    procs.worker()  # runs them: 52 succeed, the planning one waits
    # The list follows the store's changes without a reload.
    expect(page.locator("#counts")).to_contain_text("succeeded 52", timeout=60_000)
    expect(page.locator("#counts")).to_contain_text("waiting 1", timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True
    page.goto(url)
    page.locator("form.filters select[name=status]").select_option("waiting")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("table.executions tbody tr")).to_have_count(1)
    expect(page.locator("table.executions")).to_contain_text("waits for plan")
    expect(page.locator("#counts")).to_contain_text("succeeded 52")
    browser.shot(page, "list-waiting")

    page.get_by_label("Id").fill(planning.id[:-4])
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(f"**/executions/{planning.id}")
    expect(page.locator("h1")).to_contain_text(planning.id)
    page.goto(f"{url}/?q=zzzz")
    expect(page.locator(".notice")).to_contain_text("no execution zzzz")


def test_pages_fit_a_phone_screen(
    client: tether.Client, procs: Processes, browser: Browser
) -> None:
    handle = dashboard_flows.planning.enqueue("a long topic " * 8)
    url = procs.server()
    procs.worker()
    _waiting(client, handle.id)
    page = browser.page(390, 844)
    shown = {
        "/": "phone-list",
        "/waits": "phone-inbox",
        f"/executions/{handle.id}": "phone-execution",
        "/memory": "phone-memory",
    }
    for path, name in shown.items():
        page.goto(f"{url}{path}")
        expect(page.locator("main h1")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width}px wide on a 390px screen"
        if path.startswith("/executions"):  # the wait is answerable in place there too
            expect(page.locator("form[data-wait='plan'] button", has_text="Send")).to_be_visible()
        browser.shot(page, name)


def _csrf_of(page_html: str) -> dict[str, Any]:
    csrf = re.search(r'name="csrf" value="([^"]+)"', page_html)
    assert csrf is not None, page_html
    return {"csrf": csrf.group(1)}


def test_with_tokens_the_dashboard_needs_a_sign_in_and_forms_need_their_csrf_token(
    client: tether.Client, procs: Processes, browser: Browser
) -> None:
    read = client.create_token("viewer", "read")
    operate = client.create_token("manager", "operate")
    handle = dashboard_flows.approval.enqueue("tokens")
    url = procs.server()
    procs.worker()
    _waiting(client, handle.id)

    page = browser.page()
    page.goto(f"{url}/waits")
    page.wait_for_url("**/login?next=*")
    page.get_by_label("Token").fill("tether_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("[role=alert]")).to_contain_text("unknown or revoked token")
    page.get_by_label("Token").fill(read)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/waits")
    expect(page.locator("article.wait")).to_contain_text("may only read")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)

    # A form posted without the session's CSRF token (as another site's page would) is
    # refused, even with the session cookie.
    with httpx.Client(base_url=url) as http:
        login = http.get("/login")
        http.post("/login", data={**_csrf_of(login.text), "token": operate})
        refused = http.post(f"/waits/{handle.id}/approve", data={"value": "true"})
        assert refused.status_code == 403 and "CSRF" in refused.text
        forged = http.post(f"/waits/{handle.id}/approve", data={"value": "true", "csrf": "x"})
        assert forged.status_code == 403
    assert client.summary(handle.id).status == tether.Status.WAITING

    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{url}/waits")
    page.get_by_label("Token").fill(operate)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Approve").click()
    page.wait_for_url(f"**/executions/{handle.id}?done=input")
    assert tether.Client().handle(handle.id).result(timeout=60).startswith("published")
    assert [w.resolved_by for w in client.get(handle.id).waits] == ["manager"]

    # Revoking the token ends its sessions at once.
    client.revoke_token("manager")
    page.goto(f"{url}/")
    page.wait_for_url("**/login?next=*")


def test_replay_from_a_checkpoint_with_an_override_and_the_memory_browser(
    client: tether.Client, procs: Processes, browser: Browser
) -> None:
    handle = dashboard_flows.approval.enqueue("owls")
    url = procs.server()
    procs.worker()
    _waiting(client, handle.id)
    client.input(handle.id, "approve", True)
    assert client.handle(handle.id).result(timeout=60) == "published a draft about owls"
    tether.memory.set("style", {"voice": "<i>calm</i>"}, namespace="house")
    tether.memory.set("style", {"voice": "bold"}, namespace="house")

    page = browser.page()
    page.goto(f"{url}/executions/{handle.id}")
    replay = page.locator("#replay")
    publish = next(c for c in client.get(handle.id).checkpoints if c.name == "publish")
    replay.get_by_label("From").select_option(label=f"{display(publish.position)} publish")
    replay.get_by_label("Overrides").fill("{not json")
    replay.get_by_role("button", name="Replay").click()
    expect(page.locator("#replay .field-error")).to_contain_text("not valid JSON")
    page.locator("#replay").get_by_label("Overrides").fill('{"draft": "an edited draft"}')
    page.locator("#replay").get_by_role("button", name="Replay").click()
    page.wait_for_url(re.compile(r"/executions/[^/?]+\?done=replay$"))
    new_id = page.url.rsplit("/", 1)[1].split("?")[0]
    assert new_id != handle.id
    expect(page.locator("#head")).to_contain_text(handle.id)  # replay lineage
    expect(page.locator("#head")).to_have_attribute("data-status", "succeeded", timeout=60_000)
    assert client.get(new_id).result == "published an edited draft"
    browser.shot(page, "replay")

    page.goto(f"{url}/memory")
    page.get_by_role("link", name="style").click()
    expect(page.locator(".version")).to_have_count(2)
    expect(page.locator(".version").first).to_contain_text("bold")
    expect(page.locator(".version").last).to_contain_text("<i>calm</i>")
    assert page.locator(".version i").count() == 0


def test_cancel_from_the_execution_page(
    client: tether.Client, procs: Processes, browser: Browser
) -> None:
    handle = dashboard_flows.approval.enqueue("to cancel")
    url = procs.server()
    procs.worker()
    _waiting(client, handle.id)
    page = browser.page()
    page.goto(f"{url}/executions/{handle.id[:-3]}")  # a unique start of the id is enough
    expect(page.locator("#head")).to_have_attribute("data-status", "waiting")
    page.locator("#head").get_by_role("button", name="Cancel").click()
    page.wait_for_url(f"**/executions/{handle.id}?done=cancel")
    expect(page.locator("#head")).to_have_attribute("data-status", "cancelled", timeout=60_000)
    expect(page.locator("#head").get_by_role("button", name="Retry")).to_be_visible()
    assert client.summary(handle.id).status == tether.Status.CANCELLED


# --- without a browser: the forms' conversions and the pages' answers over plain HTTP ---------


def test_schema_forms_follow_refs_optionals_and_enums() -> None:
    from tether.server import _forms

    schema = {
        "$defs": {"Level": {"enum": [1, 2, 3], "title": "Level", "type": "integer"}},
        "properties": {
            "level": {"$ref": "#/$defs/Level"},
            "tags": {"items": {"type": "string"}, "type": "array"},
            "limit": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
            "ok": {"type": "boolean"},
        },
        "required": ["level", "tags", "ok"],
        "type": "object",
    }
    form = _forms.build(schema)
    kinds = {f.path: (f.kind, f.required) for f in form.fields}
    assert kinds == {
        "value.level": ("enum", True),
        "value.tags": ("json", True),
        "value.limit": ("number", False),
        "value.ok": ("boolean", True),
    }
    given = {"value.level": "2", "value.tags": '["a", "b"]', "value.limit": "", "value.ok": "true"}
    value, errors = _forms.read(form, given)
    assert (value, errors) == ({"level": 2, "tags": ["a", "b"], "ok": True}, {})
    _, errors = _forms.read(
        form, {"value.level": "", "value.tags": "[oops", "value.limit": "inf", "value.ok": "false"}
    )
    assert set(errors) == {"value.level", "value.tags", "value.limit"}
    assert _forms.build(None).kind == "json"  # no schema: any JSON
    assert _forms.path_of([]) == "value" and _forms.path_of(["a", 0]) == "value.a.0"


def test_a_wait_answered_on_the_execution_page_shows_its_errors_there(
    client: tether.Client, procs: Processes
) -> None:
    handle = dashboard_flows.planning.enqueue("errors in place")
    url = procs.server()
    procs.worker()
    _waiting(client, handle.id)
    with httpx.Client(base_url=url) as http:
        page = http.get(f"/executions/{handle.id}")
        assert page.status_code == 200
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        form = {
            **_csrf_of(page.text),
            "back": "execution",
            "value.title": "t",
            "value.pages": "2",
            "value.tone": '"loud"',
        }
        answered = http.post(f"/waits/{handle.id}/plan", data=form)
        assert answered.status_code == 422
        assert "Timeline" in answered.text  # the execution page, not the inbox
        assert "Input should be &#39;formal&#39; or &#39;casual&#39;" in answered.text
        # An answered wait says so instead of taking a second input (or, once the worker has
        # run it to the end, the execution does).
        form["value.tone"] = '"formal"'
        assert http.post(f"/waits/{handle.id}/plan", data=form).status_code == 303
        again = http.post(f"/waits/{handle.id}/plan", data=form)
        assert again.status_code == 409
        assert "already resolved" in again.text or "takes no more input" in again.text
        missing = http.get("/executions/nope-nope")
        assert missing.status_code == 404 and "no execution nope-nope" in missing.text
    assert tether.Client().handle(handle.id).result(timeout=60) == "t: 2 pages, formal"


def _counts(html: str) -> dict[str, int]:
    nav = html.split('id="counts"', 1)[1].split("</nav>", 1)[0]
    return {s: int(n) for s, n in re.findall(r">(\w+) <b>(\d+)</b>", nav)}


def test_list_counts_count_what_the_flow_queue_and_id_filters_select(
    client: tether.Client, procs: Processes
) -> None:
    plant(
        client,
        **{
            "abc-1": {"flow": "alpha", "status": "queued", "queue": "default"},
            "abc-2": {"flow": "alpha", "status": "succeeded", "queue": "fast"},
            "abd-3": {"flow": "beta", "status": "failed", "queue": "default"},
            "xyz-4": {"flow": "beta", "status": "queued", "queue": "fast"},
        },
    )
    url = procs.server()
    cases: list[tuple[dict[str, str], dict[str, int], set[str]]] = [
        (
            {},
            {"all": 4, "queued": 2, "succeeded": 1, "failed": 1},
            {"abc-1", "abc-2", "abd-3", "xyz-4"},
        ),
        ({"flow": "alpha"}, {"all": 2, "queued": 1, "succeeded": 1}, {"abc-1", "abc-2"}),
        ({"queue": "fast"}, {"all": 2, "queued": 1, "succeeded": 1}, {"abc-2", "xyz-4"}),
        # A prefix that several ids start with lists those, and counts only those.
        (
            {"q": "ab"},
            {"all": 3, "queued": 1, "succeeded": 1, "failed": 1},
            {"abc-1", "abc-2", "abd-3"},
        ),
        (
            {"q": "ab", "status": "queued"},
            {"all": 3, "queued": 1, "succeeded": 1, "failed": 1},
            {"abc-1"},
        ),
        ({"flow": "beta", "queue": "fast"}, {"all": 1, "queued": 1}, {"xyz-4"}),
    ]
    with httpx.Client(base_url=url) as http:
        for params, expected, ids in cases:
            html = http.get("/", params=params).text
            counts = {s: n for s, n in _counts(html).items() if n}
            assert counts == expected, params
            assert set(re.findall(r'<tr data-id="([^"]+)"', html)) == ids, params
            # A status tab keeps the other filters, so its count is what it lists.
            if params:
                links = html.split('id="counts"', 1)[1].split("</nav>", 1)[0]
                for key, value in params.items():
                    if key != "status":
                        assert f"{key}={value}" in links, (params, links)
        # Open (no token) to this machine only, as addressed from it: after a DNS
        # rebinding, a page of another site reaches 127.0.0.1 under its own name.
        rebound = http.get("/", headers={"Host": "attacker.example:8787"})
        assert rebound.status_code == 401 and "127.0.0.1" in rebound.text


def _signed_in(url: str, secret: str) -> str:
    """The session cookie a sign-in with `secret` gets (its value)."""
    with httpx.Client(base_url=url) as http:
        login = http.get("/login")
        signed = http.post("/login", data={**_csrf_of(login.text), "token": secret, "next": "/"})
        assert signed.status_code == 303, signed.text
        cookie = signed.cookies.get("tether_session")
    assert cookie
    return cookie


def _get(url: str, path: str, cookie: str) -> httpx.Response:
    return httpx.get(f"{url}{path}", cookies={"tether_session": cookie}, timeout=30)


def test_sessions_outlive_a_restart_serve_every_process_and_end_with_their_token(
    client: tether.Client, procs: Processes
) -> None:
    operate = client.create_token("manager", "operate")
    client.create_token("watcher", "read")
    handle = dashboard_flows.approval.enqueue("restart")
    first = procs.server()
    procs.worker()
    _waiting(client, handle.id)
    cookie = _signed_in(first, operate)
    page = _get(first, "/waits", cookie)
    assert page.status_code == 200 and "Approve" in page.text

    # Another server process on the same store takes the session; then the first one dies.
    second = procs.server()
    assert _get(second, "/waits", cookie).status_code == 200
    server_proc = procs.procs[0]
    server_proc.kill()
    server_proc.wait(timeout=10)
    restarted = procs.server()
    page = _get(restarted, f"/executions/{handle.id}", cookie)
    assert page.status_code == 200 and handle.id in page.text
    # Its forms still carry the session's CSRF token, and still need it.
    waits = _get(restarted, "/waits", cookie)
    approve = f"{restarted}/waits/{handle.id}/approve"
    with httpx.Client(cookies={"tether_session": cookie}) as http:
        missing = http.post(approve, data={"value": "true"})
        assert missing.status_code == 403 and "CSRF" in missing.text
        forged = http.post(approve, data={"value": "true", "csrf": "x" * 43})
        assert forged.status_code == 403
        assert client.summary(handle.id).status == tether.Status.WAITING
        given = http.post(approve, data={"value": "true", **_csrf_of(waits.text)})
        assert given.status_code == 303, given.text
    assert tether.Client().handle(handle.id).result(timeout=60).startswith("published")
    assert [w.resolved_by for w in client.get(handle.id).waits] == ["manager"]

    # A cookie altered in any part is refused: another name, a later expiry, another nonce.
    version, kind, name, expires, nonce, mac = cookie.split("~")
    watcher = base64.urlsafe_b64encode(b"watcher").rstrip(b"=").decode()
    tampered = [
        "~".join((version, kind, watcher, expires, nonce, mac)),
        "~".join((version, kind, name, str(int(expires) + 3600), nonce, mac)),
        "~".join(
            (version, kind, name, expires, nonce[:-1] + ("A" if nonce[-1] != "A" else "B"), mac)
        ),
        "~".join((version, kind, name, expires, nonce, "")),
        "~".join((version, "a", name, expires, nonce, mac)),
        "garbage",
    ]
    for forged_cookie in tampered:
        refused = _get(restarted, "/waits", forged_cookie)
        assert refused.status_code == 303, forged_cookie
        assert refused.headers["location"].startswith("/login?next=")
    assert _get(restarted, "/waits", cookie).status_code == 200

    # Revoking the token ends its sessions on every process, and signing out ends this one
    # in the browser.
    client.revoke_token("manager")
    for url in (second, restarted):
        refused = _get(url, "/", cookie)
        assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
    # A new token under the old name does not revive the old sessions.
    client.create_token("manager", "operate")
    assert _get(restarted, "/", cookie).status_code == 303


def test_with_a_secret_the_store_alone_cannot_sign_a_session(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session keys come from the token's stored hash; `TETHER_SECRET` mixes in a key the
    store does not hold, so someone who reads the store cannot forge a cookie."""
    from tether._core import config
    from tether.server._session import Sessions, _Cookie

    def signed_in_cookie() -> str:
        client = tether.Client(db_url)
        keys = client.token_signing_keys()
        return Sessions(client)._signed("ops", "operate", keys["ops"][1]).id

    def verifies(cookie: str) -> bool:
        client = tether.Client(db_url)
        parsed = _Cookie.parse(cookie)
        assert parsed is not None
        return Sessions(client)._verified(parsed, client.token_signing_keys()) is not None

    tether.Client(db_url).create_token("ops", "operate")
    without = signed_in_cookie()  # what anyone who reads the store can make
    monkeypatch.setenv("TETHER_SECRET", "a server secret")
    config.reset()
    tether.configure(db=db_url, adopt=False)
    assert not verifies(without)
    assert verifies(signed_in_cookie())


# --- schedules -------------------------------------------------------------------------------


def _plant_schedule(name: str, spec: str, next_tick: float) -> None:
    """A schedule as a worker that loaded a scheduled flow leaves it in the store."""
    from tether._core.config import store_for
    from tether.store import ScheduleRow

    store_for().ensure_schedule(ScheduleRow(name, spec, False, 0.0, next_tick, 0.0))


def test_pausing_a_schedule_by_clicking_shows_it_paused_everywhere(
    client: tether.Client, procs: Processes, browser: Browser
) -> None:
    _plant_schedule("nightly", "0 3 * * *", 10_800.0)
    _plant_schedule("<b>digest</b>", "every 900s", 900.0)
    url = procs.server()

    page = browser.page()
    page.goto(url)
    page.get_by_role("link", name="Schedules").click()
    page.wait_for_url("**/schedules")
    row = page.locator("tr[data-schedule='nightly']")
    expect(row).to_contain_text("0 3 * * *")
    expect(row).to_contain_text("1970-01-01 03:00:00")
    expect(row).to_contain_text("active")
    expect(page.locator("tr[data-schedule]")).to_have_count(2)
    assert page.locator("tr[data-schedule] td b").count() == 0  # a stored name is text
    row.get_by_role("button", name="Pause nightly").click()
    page.wait_for_url("**/schedules?done=pause")
    expect(page.locator(".notice")).to_contain_text("Paused")
    row = page.locator("tr[data-schedule='nightly']")
    expect(row).to_have_attribute("data-paused", "true")
    expect(row).to_contain_text("paused")
    assert {s.name: s.paused for s in client.schedules()} == {
        "nightly": True,
        "<b>digest</b>": False,
    }
    browser.shot(page, "schedules-paused")

    row.get_by_role("button", name="Resume nightly").click()
    page.wait_for_url("**/schedules?done=resume")
    expect(page.locator("tr[data-schedule='nightly']")).to_have_attribute("data-paused", "false")
    assert not any(s.paused for s in client.schedules())


def test_schedules_page_offers_no_buttons_to_a_read_token_and_forms_need_csrf(
    client: tether.Client, procs: Processes
) -> None:
    read = client.create_token("viewer", "read")
    operate = client.create_token("manager", "operate")
    url = procs.server()
    with httpx.Client(base_url=url) as http:
        assert http.get("/schedules").status_code == 303  # tokens exist: sign in first
    watcher = _signed_in(url, read)
    empty = _get(url, "/schedules", watcher)
    assert empty.status_code == 200 and "No schedules yet" in empty.text

    _plant_schedule("nightly", "0 3 * * *", 10_800.0)
    shown = _get(url, "/schedules", watcher)
    assert 'data-schedule="nightly"' in shown.text
    assert "<button" not in shown.text.split("<main", 1)[1]
    assert "may only read" in shown.text
    refused = httpx.post(
        f"{url}/schedules/nightly/pause",
        data=_csrf_of(shown.text),
        cookies={"tether_session": watcher},
    )
    assert refused.status_code == 403 and "operate token" in refused.text
    assert not client.schedules()[0].paused

    manager = _signed_in(url, operate)
    page = _get(url, "/schedules", manager)
    assert 'aria-label="Pause nightly"' in page.text
    cookies = {"tether_session": manager}
    forged = httpx.post(f"{url}/schedules/nightly/pause", data={"csrf": "x"}, cookies=cookies)
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert not client.schedules()[0].paused
    csrf = _csrf_of(page.text)
    missing = httpx.post(f"{url}/schedules/daily/pause", data=csrf, cookies=cookies)
    assert missing.status_code == 404 and "schedules: nightly" in missing.text
    wrong = httpx.post(f"{url}/schedules/nightly/delete", data=csrf, cookies=cookies)
    assert wrong.status_code == 400 and "no schedule action" in wrong.text
    paused = httpx.post(f"{url}/schedules/nightly/pause", data=csrf, cookies=cookies)
    assert paused.status_code == 303 and paused.headers["location"] == "/schedules?done=pause"
    assert client.schedules()[0].paused
    assert 'aria-label="Resume nightly"' in _get(url, "/schedules", manager).text


# --- deadlines and delayed starts --------------------------------------------------------------


def _status_line(html: str) -> str:
    line = html.split('class="status-line"', 1)[1].split("</p>", 1)[0]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", line)).strip()


def test_execution_pages_show_deadlines_timeouts_and_delayed_starts(
    client: tether.Client, procs: Processes
) -> None:
    late = dashboard_flows.approval.options(deadline=1.5).enqueue("late")
    timely = dashboard_flows.approval.options(deadline=3600).enqueue("timely")
    delayed = dashboard_flows.quick.options(delay=3600, deadline=60).enqueue(1)
    url = procs.server()
    procs.worker()
    _waiting(client, timely.id)

    def timed_out() -> bool:
        return client.summary(late.id).status == tether.Status.CANCELLED

    retry_until(timed_out, timeout=60, what="the execution past its deadline to be cancelled")
    with httpx.Client(base_url=url, timeout=30) as http:
        # Waiting for input, its deadline fixed at its first start: when, and how far off.
        page = http.get(f"/executions/{timely.id}").text
        deadline = client.get(timely.id).deadline
        assert deadline is not None
        line = _status_line(page)
        # The time of day alone when that is today (UTC), else with its date.
        assert re.search(rf"deadline ({deadline:%Y-%m-%d} )?{deadline:%H:%M:%S}, in \S+ min", line)
        assert f"{deadline:%Y-%m-%d %H:%M:%S}" in page  # the facts give the date too

        page = http.get(f"/executions/{late.id}").text
        assert "timed out" in _status_line(page) and "deadline" not in _status_line(page)
        assert "passed its deadline" in page  # the recorded error says what to do

        # Queued with a start an hour off (no worker takes it yet), its deadline relative.
        page = http.get(f"/executions/{delayed.id}").text
        line = _status_line(page)
        not_before = client.summary(delayed.id).not_before
        assert not_before is not None
        assert re.search(rf"starts at ({not_before:%Y-%m-%d} )?{not_before:%H:%M:%S}, in ", line)
        assert "deadline 60.0 s after it starts" in line
        assert client.summary(delayed.id).status == tether.Status.QUEUED

        listed = http.get("/").text
        rows = {
            execution_id: row
            for execution_id, row in re.findall(r'<tr data-id="([^"]+)">(.*?)</tr>', listed, re.S)
        }
        assert f"starts at {not_before:%Y-%m-%d %H:%M:%S}" in rows[delayed.id]
        assert "timed out" in rows[late.id]
        assert "starts at" not in rows[timely.id] and "timed out" not in rows[timely.id]


def test_countdowns_count_down_on_an_open_page_and_show_when_they_passed(
    client: tether.Client, procs: Processes, browser: Browser
) -> None:
    now = time.time()
    # Nobody runs them (no worker): only time changes what their pages should say.
    plant(
        client,
        **{
            "cd-deadline": {"flow": "alpha", "status": "waiting", "deadline": now + 95},
            "cd-start": {"flow": "beta", "status": "queued", "not_before": now + 95},
            "cd-passed": {"flow": "gamma", "status": "waiting", "deadline": now - 5},
        },
    )
    url = procs.server()
    with httpx.Client(base_url=url, timeout=30) as http:
        # Without JavaScript the server's rendering says it all, the passed state included.
        response = http.get("/executions/cd-passed")
        assert re.search(r"deadline \S+, passed \d+\.\d s ago", _status_line(response.text))
        assert 'class="deadline warn"' in response.text
        # The counting is dashboard.js, from /static: the policy still refuses inline scripts.
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src" not in policy
        assert re.search(r"starts at \S+ \S+, .*>in \d+\.\d s<", http.get("/").text)

    page = browser.page()
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    # The page's clock runs as ever until the test moves it ahead (`fast_forward`).
    page.clock.install()

    def counts_down(countdown: Any, passed: str) -> None:
        seen: list[str] = []

        def moved() -> str | None:
            # The same element, its text changed in place: not the server's new rendering
            # of the region (the live updates replace it whole, as they do once on load).
            text, same = countdown.evaluate("e => [e.textContent, e.__seen === true]")
            if not same:
                countdown.evaluate("e => { e.__seen = true; }")
                seen[:] = [text]
                return None
            return str(text) if text != seen[0] else None

        later = retry_until(moved, what="the countdown to move on an open page")
        first = seen[0]
        assert re.fullmatch(r"in \d+\.\d s", first), first
        assert re.fullmatch(r"in \d+\.\d s", later), later
        assert float(later.split()[1]) < float(first.split()[1])
        page.clock.fast_forward("02:00")  # two minutes on: past the moment
        expect(countdown).to_have_text(re.compile(passed))

    page.goto(f"{url}/executions/cd-deadline")
    page.evaluate("window.__sameDocument = true")
    counts_down(page.locator("#head .deadline .countdown"), r"^passed \d+\.\d s ago$")
    expect(page.locator("#head .deadline")).to_have_class(re.compile(r"\bwarn\b"))
    assert page.evaluate("window.__sameDocument") is True  # counted here, never reloaded

    page.goto(f"{url}/executions/cd-start")
    counts_down(page.locator("#head .delayed .countdown"), r"^due$")
    expect(page.locator("#head .delayed")).to_contain_text("starts at")

    page.goto(f"{url}/")
    counts_down(page.locator("tr[data-id='cd-start'] .delayed .countdown"), r"^due$")
    assert refused == []
