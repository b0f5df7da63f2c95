"""Issue 17: the inventory page on the admin routes (`/admin/`, docs/inventory.md), who holds what
until when. A real browser (Debian's headless Chromium through its chromedriver, Selenium 4.51,
loopback only) logs in with the admin credential, sees a grant the test made, a denial the test
caused (by its audit decision id), a role's last use and a role never used, presses "Revoke task",
and sees the task ended, its grant revoked and the flash; the broker JWT of that task then
introspects `active: false` while another task's stays active. With `EPHEMERA_SCREENSHOT=1` the
test writes docs/inventory.png (never required).

The twins need no browser (`requests`): a wrong credential is 401 with no cookie; the cookie's
attributes (`Secure` on a TLS listener only); `/admin/revoke` without the form token, with another
session's, from another origin or site is 403 `cross_site_request` and revokes nothing, without a
session 401 `session_required`; logout, a reload with another admin credential and a restart end
a session; a session is one process's own (replicas do not share them) while what the audit log
says (denials, last use) survives a restart; the page is on the admin listener when there is one;
no secret (admin credential, session id, broker JWT, ID token) is ever in a page; a subject with
markup in it is shown as text."""

from __future__ import annotations

import copy
import base64
import datetime
import html.parser
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import (
    GH_OWNER_ID,
    GH_REPOSITORY_ID,
    PARTNER,
    STARTUP_TIMEOUT,
    Broker,
    cloud_role,
    free_port,
    github_claims,
    github_provider,
    good_claims,
    provider,
    require_peer,
    role,
    to_toml,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "inventory.png"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

ADMIN_TOKEN = "inventory-admin-" + "q" * 40
OTHER_ADMIN_TOKEN = "inventory-admin-" + "r" * 40
COOKIE = "ephemera_admin"
JWT = {"kind": "jwt", "audience": PARTNER}
# the subject the GitHub profile makes of the harness's claims: owner@id/name@id
MAIN_SUB = f"repo:acme@{GH_OWNER_ID}/app@{GH_REPOSITORY_ID}"
SITE_SUB = f"repo:acme@{GH_OWNER_ID}/site@{GH_REPOSITORY_ID}"
MARKUP_SUB = 'repo:acme/app:<script>alert("owned")</script>'
MARKUP_TASK = 'x"><script>alert(1)</script>'
RELOADED = "config reloaded"


# ---- a small HTML reader (no browser, no third-party parser) ---------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def text(self) -> str:
        parts = []
        for c in self.children:
            parts.append(c if isinstance(c, str) else c.text)
        return re.sub(r"\s+", " ", "".join(parts)).strip()

    def get(self, name: str) -> str | None:
        return self.attrs.get(name)

    def elements(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.elements()

    def select(self, selector: str) -> list["Node"]:
        """Compound selectors (`tag`, `#id`, `.class`, `[attr]`, `[attr=value]`) joined by the
        descendant combinator (a space): enough for the page's markup."""
        current: list[Node] = [self]
        for part in selector.split():
            found: list[Node] = []
            for n in current:
                for e in n.elements():
                    if matches(e, part) and e not in found:
                        found.append(e)
            current = found
        return current

    def one(self, selector: str) -> "Node":
        found = self.select(selector)
        assert len(found) == 1, f"{selector!r}: {len(found)} elements"
        return found[0]


_PART = re.compile(r"([a-z0-9]+)|#([\w-]+)|\.([\w-]+)|\[([\w-]+)(?:=\"?([^\]\"]*)\"?)?\]")


def matches(e: Node, part: str) -> bool:
    pos = 0
    while pos < len(part):
        m = _PART.match(part, pos)
        assert m, f"selector part {part!r} not understood at {pos}"
        tag, ident, cls, attr, value = m.groups()
        if tag and e.tag != tag:
            return False
        if ident and e.get("id") != ident:
            return False
        if cls and cls not in (e.get("class") or "").split():
            return False
        if attr and (e.get(attr) is None or (value is not None and e.get(attr) != value)):
            return False
        pos = m.end()
    return True


class _Builder(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.at = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.at)
        self.at.children.append(n)
        if tag not in VOID:
            self.at = n

    def handle_startendtag(self, tag, attrs):
        self.at.children.append(Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.at))

    def handle_endtag(self, tag):
        n = self.at
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.at = n.parent

    def handle_data(self, data):
        self.at.children.append(data)


def parse(text: str) -> Node:
    b = _Builder()
    b.feed(text)
    b.close()
    return b.root


# ---- the broker and its page ---------------------------------------------------------------------


def rfc3339(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_cookie(r: requests.Response) -> str | None:
    return r.headers.get("Set-Cookie")


def session_of(r: requests.Response) -> str:
    """The session id of a login's answer (asserted 303 to the page with the cookie)."""
    assert r.status_code == 303, (r.status_code, r.text[:300])
    assert r.headers["Location"] == "/admin/", r.headers
    m = re.match(rf"^{COOKIE}=([A-Za-z0-9_-]+);", set_cookie(r) or "")
    assert m, r.headers
    return m.group(1)


def cookie(sid: str) -> dict:
    return {"Cookie": f"{COOKIE}={sid}"}


class Grant:
    def __init__(self, assertion: str, token: str, claims: dict):
        self.assertion, self.token, self.claims = assertion, token, claims
        self.task = f"{claims['repository_id']}/{claims['run_id']}/{claims['run_attempt']}"


class Site:
    """A broker (memory state, one GitHub-profile provider `gh`) with two JWT roles: `deploy`,
    which the test uses, and `unused`, which it never does; the admin credential in a file."""

    def __init__(self, broker_factory, mock_issuer, tmp_path: Path, *, admin_listen: bool = False,
                 token_file: Path | None = None):
        self.mock = mock_issuer
        self.token_file = token_file or tmp_path / "admin.token"
        if token_file is None:
            self.token_file.write_text(ADMIN_TOKEN + "\n")
        admin = {"token_file": str(self.token_file)}
        if admin_listen:
            admin["listen"] = f"127.0.0.1:{free_port()}"
        self.broker = broker_factory(
            providers=[github_provider("gh", mock_issuer.issuer)],
            roles=[cloud_role("deploy", "gh", JWT), cloud_role("unused", "gh", JWT)],
            server={"rate_limit_per_second": 0},
            extra_config={"admin": admin},
        )
        self.secrets: list[str] = [ADMIN_TOKEN]

    @property
    def url(self) -> str:
        """Where the admin routes are: the admin listener when there is one."""
        listen = self.broker.config["admin"].get("listen")
        return f"http://{listen}" if listen else self.broker.url

    @property
    def origin(self) -> str:
        return self.url

    # -- workloads ---------------------------------------------------------------------------
    def grant(self, **claims) -> Grant:
        c = github_claims(self.mock.issuer, **claims)
        assertion = self.mock.sign(c)
        r = self.broker.exchange(assertion, role="deploy")
        assert r.status == 200, r
        g = Grant(assertion, r.json["access_token"], c)
        self.secrets += [g.assertion, g.token]
        return g

    def deny(self, **claims) -> str:
        """A refused exchange (the role pins `ref`); its decision id, checked in the audit."""
        assertion = self.mock.sign(github_claims(self.mock.issuer, ref="refs/heads/evil", **claims))
        self.secrets.append(assertion)
        r = self.broker.exchange(assertion, role="deploy")
        assert (r.status, r.reason) == (400, "policy_denied"), r
        rec = self.broker.audit_record(r.decision_id)
        assert rec["decision"] == "deny" and rec["reason"] == "policy_denied", rec
        return r.decision_id

    # -- the admin API (bearer), to check what the page did ------------------------------------
    def introspect(self, token: str) -> bool:
        r = requests.post(self.url + "/v1/introspect", data={"token": token},
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["active"]

    def revocations(self) -> list[str]:
        r = requests.get(self.url + "/v1/revocations", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                         timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        items = body["revocations"] if isinstance(body, dict) else body
        return sorted(i["key"] for i in items)

    def revoke_records(self) -> list[dict]:
        return [r for r in self.broker.audit() if r["decision"] == "revoke"]

    # -- the page -----------------------------------------------------------------------------
    def login(self, token: str = ADMIN_TOKEN, **headers) -> requests.Response:
        return requests.post(self.url + "/admin/login", data={"token": token}, headers=headers,
                             allow_redirects=False, timeout=30)

    def session(self) -> str:
        return session_of(self.login())

    def page(self, sid: str | None, **headers) -> requests.Response:
        h = dict(cookie(sid) if sid else {}, **headers)
        return requests.get(self.url + "/admin/", headers=h, allow_redirects=False, timeout=30)

    def doc(self, sid: str) -> Node:
        r = self.page(sid)
        assert r.status_code == 200, (r.status_code, r.headers, r.text[:300])
        self.check_secrets(r.text, sid)
        return parse(r.text)

    def csrf(self, sid: str) -> str:
        return self.doc(sid).one("form#logout input[name=csrf]").get("value")

    def post(self, path: str, sid: str | None, form: dict, **headers) -> requests.Response:
        h = dict(cookie(sid) if sid else {})
        h.update(headers)
        h.setdefault("Content-Type", "application/x-www-form-urlencoded")
        return requests.post(self.url + path, data=urlencode(form), headers=h, allow_redirects=False, timeout=30)

    def revoke_task(self, sid: str | None, g: Grant, csrf: str | None, **headers) -> requests.Response:
        form = {"kind": "task", "value": g.task, "provider": "gh"}
        if csrf is not None:
            form["csrf"] = csrf
        return self.post("/admin/revoke", sid, form, **headers)

    def check_secrets(self, text: str, sid: str | None = None):
        """No secret the page could know is in it: the admin credential, the workloads' ID tokens
        and broker JWTs (nor their signatures), the session id."""
        for s in self.secrets + ([sid] if sid else []):
            assert s not in text, "a secret is in the page"
            if s.count(".") == 2:
                assert s.rsplit(".", 1)[1] not in text, "a JWT's signature is in the page"


@pytest.fixture
def site(broker_factory, mock_issuer, tmp_path):
    return Site(broker_factory, mock_issuer, tmp_path)


def assert_refused(r: requests.Response, status: int, error: str, reason: str):
    """An RFC 6749 JSON refusal."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["error"] == error and body["error_description"].startswith(reason + ": "), body
    assert r.headers.get("Cache-Control") == "no-store", dict(r.headers)
    assert COOKIE not in (set_cookie(r) or ""), r.headers


def assert_page_headers(r: requests.Response):
    assert r.headers["Content-Type"].startswith("text/html"), r.headers
    assert r.headers.get("Cache-Control") == "no-store", dict(r.headers)
    csp = [d.strip() for d in r.headers["Content-Security-Policy"].split(";")]
    assert csp[0] == "default-src 'none'", csp
    assert "frame-ancestors 'none'" in csp and not any("script-src" in d for d in csp), csp
    assert r.headers.get("X-Frame-Options") == "DENY", dict(r.headers)


# ---- the browser ---------------------------------------------------------------------------------


def chromium(tmp_path: Path):
    """Headless Debian Chromium driven by Debian's chromedriver; Selenium Manager is never asked
    (the driver's path is given), and Chromium resolves no name but loopback (nothing leaves the
    machine: no update, sync, safe-browsing or QUIC traffic either)."""
    found = all(Path(p).is_file() for p in (CHROMIUM, CHROMEDRIVER))
    require_peer("chromium and chromedriver", found, "apt-get install chromium chromium-driver (scripts/test)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require_peer("selenium", False, "pip install -r tests/requirements.txt")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--no-proxy-server", "--window-size=1280,900",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture
def browser(tmp_path):
    drv = chromium(tmp_path)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def submit(drv, button):
    """Clicks a form's button and waits until the next page has loaded (the old one gone).

    The old page is recognised by a mark set on its window, not by a reference to one of its
    elements: asking chromedriver whether an element of a page being replaced is stale races the
    navigation (it may answer "Node with given id does not belong to the document" instead of
    stale; a failed CI run showed it)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    drv.execute_script("window.__ephemeraOldPage = true;")
    button.click()

    def loaded(d):
        try:
            return d.execute_script(
                "return window.__ephemeraOldPage === undefined && document.readyState === 'complete';")
        except WebDriverException:
            return False  # mid-navigation: ask again

    WebDriverWait(drv, 30, poll_frequency=0.05).until(loaded)


def full_page_screenshot(drv, path: Path):
    """The whole page as a PNG (Chromium's DevTools capture beyond the window's viewport)."""
    size = drv.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = drv.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def test_the_browser_logs_in_sees_who_holds_what_and_ends_a_task(site, browser):
    from selenium.webdriver.common.by import By

    css = By.CSS_SELECTOR
    ended = site.grant()
    kept = site.grant()
    also_kept = site.grant(repository="acme/site", sub="repo:acme/site:ref:refs/heads/main")
    denial = site.deny()
    allow = [r for r in site.broker.audit() if r["decision"] == "allow"][-1]

    # the address an admin types: /admin goes to the page, the page (no session) to the login
    browser.get(site.url + "/admin")
    assert browser.current_url == site.url + "/admin/login", browser.current_url
    # a wrong credential: refused, the login form again, no cookie
    browser.find_element(By.ID, "token").send_keys("not-the-admin-credential-" + "x" * 20)
    submit(browser, browser.find_element(By.ID, "login-submit"))
    body = browser.find_element(By.TAG_NAME, "body").text
    # (a page the broker refused the form with says why)
    assert browser.find_elements(By.ID, "login-failed"), body
    assert browser.find_element(By.ID, "login-failed").is_displayed()
    assert browser.get_cookies() == []
    assert browser.find_elements(css, "section#grants") == []
    # the credential
    field = browser.find_element(By.ID, "token")
    assert field.get_attribute("type") == "password"
    field.send_keys(ADMIN_TOKEN)
    submit(browser, browser.find_element(By.ID, "login-submit"))
    assert browser.current_url == site.url + "/admin/", browser.find_element(By.TAG_NAME, "body").text
    [c] = browser.get_cookies()
    assert (c["name"], c["path"], c["httpOnly"], c["sameSite"], c["secure"]) == \
        (COOKIE, "/admin", True, "Strict", False), c
    assert browser.find_elements(By.ID, "flash") == []  # nothing done yet

    # the grants, by task
    task_sel = f'tbody.task[data-provider="gh"][data-task="{ended.task}"]'
    task = browser.find_element(css, task_sel)
    assert task.get_attribute("data-revoked") == "false"
    jti = jwt_claims(ended.token)["jti"]
    row = task.find_element(css, f'tr.grant[data-jti="{jti}"]')
    assert row.get_attribute("data-status") == "active"
    cells = {k: row.find_element(css, "td." + k).text for k in
             ("subject", "role", "kind", "audience", "issued", "expires", "status")}
    exp = jwt_claims(ended.token)["exp"]
    assert cells["subject"] == MAIN_SUB and cells["role"] == "deploy" and cells["kind"] == "jwt", cells
    assert cells["audience"] == PARTNER and cells["status"] == "active", cells
    assert cells["expires"].startswith(rfc3339(exp)) and "(in " in cells["expires"], cells
    assert cells["issued"] == rfc3339(jwt_claims(ended.token)["iat"]), cells
    assert len(browser.find_elements(css, "tbody.task")) == 3
    other = browser.find_element(css, f'tbody.task[data-task="{also_kept.task}"] td.subject')
    assert other.text == SITE_SUB, other.text
    assert len(browser.find_elements(css, "tr.grant[data-status=active]")) == 3

    # the denial the test caused, by its decision id, with its reason
    d = browser.find_element(css, f'section#denials tr.denial[data-decision-id="{denial}"]')
    assert d.find_element(css, ".reason").text.startswith("policy_denied"), d.text
    # the role used: its last grant and workloads; the role never used says so
    used = browser.find_element(css, 'section#roles tr.role[data-role="deploy"]')
    assert used.get_attribute("data-used") == "true"
    assert used.find_element(css, ".last-used").text.startswith(rfc3339(allow["ts"])), used.text
    assert used.find_element(css, ".live").text == "3"
    # its two workloads (two tasks of one workload are one workload)
    workloads = [w.text for w in used.find_elements(css, ".workloads div")]
    assert len(workloads) == 2 and all(w.endswith(" ago)") and "(gh, " in w for w in workloads), workloads
    assert sorted("/site" in w for w in workloads) == [False, True], workloads
    unused = browser.find_element(css, 'section#roles tr.role[data-role="unused"]')
    assert unused.get_attribute("data-used") == "false"
    never = unused.find_element(css, ".last-used").text
    assert never.startswith("never") and never.endswith("trust that can go?"), never
    assert unused.find_element(css, ".live").text == "0"
    assert browser.find_elements(css, "section#revocations tr.revocation") == []

    # "Revoke task"
    submit(browser, task.find_element(css, "form.revoke-task button"))
    assert browser.current_url == site.url + "/admin/", browser.find_element(By.TAG_NAME, "body").text
    flash = browser.find_element(By.ID, "flash").text
    assert flash == f"Revoked task:gh:{ended.task} (1 live grant ended).", flash
    task = browser.find_element(css, task_sel)
    assert task.get_attribute("data-revoked") == "true"
    assert "ended" in task.find_element(css, "tr.task-head").text
    assert task.find_elements(css, "form.revoke-task") == []
    row = task.find_element(css, f'tr.grant[data-jti="{jti}"]')
    assert row.get_attribute("data-status") == "revoked"
    assert row.find_element(css, "td.status").text == "revoked"
    assert row.find_elements(css, "form.revoke-grant") == []
    keys = [r.get_attribute("data-key") for r in browser.find_elements(css, "section#revocations tr.revocation")]
    assert keys == [f"task:gh:{ended.task}"], keys
    # the twin: the other tasks are untouched
    for other in (kept, also_kept):
        t = browser.find_element(css, f'tbody.task[data-task="{other.task}"]')
        assert t.get_attribute("data-revoked") == "false"
        assert [r.get_attribute("data-status") for r in t.find_elements(css, "tr.grant")] == ["active"]
        assert len(t.find_elements(css, "form.revoke-task")) == 1
    assert browser.find_element(css, 'tr.role[data-role="deploy"] .live').text == "2"

    # the broker agrees: the task's credential is dead, the others live
    assert site.introspect(ended.token) is False
    assert site.introspect(kept.token) is True and site.introspect(also_kept.token) is True
    assert [r["detail"] for r in site.revoke_records()] == [f"revoked `task:gh:{ended.task}`"]
    page = browser.page_source
    site.check_secrets(page, c["value"])

    if os.environ.get("EPHEMERA_SCREENSHOT") == "1":
        full_page_screenshot(browser, SCREENSHOT)
        print(f"screenshot: {SCREENSHOT}")

    # the flash is shown once
    browser.get(site.url + "/admin/")
    assert browser.find_elements(By.ID, "flash") == []
    # log out: back at the login, and the page is closed to the cookie the browser had
    submit(browser, browser.find_element(css, "form#logout button"))
    assert browser.current_url == site.url + "/admin/login", browser.find_element(By.TAG_NAME, "body").text
    assert site.page(c["value"]).headers["Location"] == "/admin/login"
    print(f"page: 3 tasks, 1 ended from the browser ({ended.task}), denial {denial} shown, "
          f"role `unused` never used")


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ---- the way in: redirects, login, the cookie ----------------------------------------------------


def test_the_page_is_behind_a_login(site):
    r = requests.get(site.url + "/admin", allow_redirects=False, timeout=30)
    assert (r.status_code, r.headers.get("Location")) == (303, "/admin/"), r.headers
    for sid in (None, "not-a-session", "A" * 43):
        r = site.page(sid)
        assert (r.status_code, r.headers.get("Location")) == (303, "/admin/login"), (sid, r.headers)
        assert "section" not in r.text
    r = requests.get(site.url + "/admin/login", timeout=30)
    assert r.status_code == 200, r.text
    assert_page_headers(r)
    doc = parse(r.text)
    form = doc.one("form#login")
    assert (form.get("method"), form.get("action")) == ("post", "/admin/login")
    field = form.one("input#token")
    assert (field.get("name"), field.get("type")) == ("token", "password")
    form.one("button#login-submit")
    assert doc.select("p#login-failed") == []
    # the twin: a session opens it
    r = site.page(site.session())
    assert r.status_code == 200, r.text
    assert_page_headers(r)
    parse(r.text).one("section#grants")


@pytest.mark.parametrize("token", ["wrong-" + "z" * 40, "", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1]])
def test_a_wrong_credential_is_401_and_no_cookie(site, token):
    r = site.login(token, accept="text/html")
    assert r.status_code == 401, (r.status_code, r.text[:200])
    assert set_cookie(r) is None, r.headers
    assert_page_headers(r)
    doc = parse(r.text)
    doc.one("p#login-failed")
    doc.one("form#login")
    site.check_secrets(r.text)
    # a client that does not ask for HTML gets RFC 6749 JSON, like every other route's refusal
    r = site.login(token)
    assert r.status_code == 401 and set_cookie(r) is None, r.headers
    assert r.json()["error"] == "invalid_client", r.text
    assert r.json()["error_description"].startswith("unauthorized:"), r.text
    # the twin: the credential opens a session
    session_of(site.login())


def test_the_cookie_is_httponly_strict_for_the_admin_path_and_lasts_15_minutes(site):
    r = site.login()
    sid = session_of(r)
    assert set_cookie(r) == f"{COOKIE}={sid}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=900", r.headers
    assert len(sid) >= 43, sid  # 256 random bits
    other = site.session()
    assert other != sid
    # each session has its own form token, which is not its id
    a, b = site.csrf(sid), site.csrf(other)
    assert a != b and a not in (sid, other) and b not in (sid, other), (a, b)
    # every form of the page carries the session's token
    g = site.grant()
    doc = site.doc(sid)
    forms = doc.select("form")
    assert {f.get("id") or f.get("class") for f in forms} == \
        {"logout", "inline revoke-task", "inline revoke-grant"}, [f.attrs for f in forms]
    for f in forms:
        assert f.get("method") == "post" and f.get("action") in ("/admin/logout", "/admin/revoke"), f.attrs
        assert f.one("input[name=csrf]").get("value") == a, f.attrs
    assert doc.one(f'tbody.task[data-task="{g.task}"] form.revoke-task input[name=value]').get("value") == g.task
    print(f"cookie: {set_cookie(r).replace(sid, '<session>')}")


# ---- CSRF, cross-site, sessions ------------------------------------------------------------------


def assert_nothing_revoked(site, g: Grant):
    assert site.introspect(g.token) is True
    assert site.revocations() == []
    assert site.revoke_records() == []


REFUSALS = {
    # case: (what the request changes, the status, error and reason)
    "no csrf": (lambda sid, csrf, other: (sid, None, {}), 403, "access_denied", "cross_site_request"),
    "another session's csrf": (lambda sid, csrf, other: (sid, other, {}), 403, "access_denied", "cross_site_request"),
    "an empty csrf": (lambda sid, csrf, other: (sid, "", {}), 403, "access_denied", "cross_site_request"),
    "Origin: http://evil": (lambda sid, csrf, other: (sid, csrf, {"Origin": "http://evil"}),
                            403, "access_denied", "cross_site_request"),
    "Origin: null": (lambda sid, csrf, other: (sid, csrf, {"Origin": "null"}), 403, "access_denied", "cross_site_request"),
    "Sec-Fetch-Site: cross-site": (lambda sid, csrf, other: (sid, csrf, {"Sec-Fetch-Site": "cross-site"}),
                                   403, "access_denied", "cross_site_request"),
    "Sec-Fetch-Site: same-site": (lambda sid, csrf, other: (sid, csrf, {"Sec-Fetch-Site": "same-site"}),
                                  403, "access_denied", "cross_site_request"),
    "no session": (lambda sid, csrf, other: (None, csrf, {}), 401, "invalid_client", "session_required"),
    "another session's id": (lambda sid, csrf, other: ("B" * 43, csrf, {}), 401, "invalid_client", "session_required"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_revoke_without_the_session_s_own_token_or_from_another_site_revokes_nothing(site, case):
    change, status, error, reason = REFUSALS[case]
    g = site.grant()
    sid, other = site.session(), site.session()
    csrf, other_csrf = site.csrf(sid), site.csrf(other)
    use_sid, use_csrf, headers = change(sid, csrf, other_csrf)
    r = site.revoke_task(use_sid, g, use_csrf, **headers)
    assert_refused(r, status, error, reason)
    # to a browser, the same refusal as a page
    r = site.revoke_task(use_sid, g, use_csrf, Accept="text/html,application/xhtml+xml", **headers)
    assert r.status_code == status, r.text[:300]
    assert_page_headers(r)
    doc = parse(r.text)
    assert doc.one("p#refused code#error").text == error
    assert doc.one("#error-description").text.startswith(reason + ": ")
    assert_nothing_revoked(site, g)
    # the twin: the same session's own token, from the page's own origin, revokes
    r = site.revoke_task(sid, g, csrf, Origin=site.origin, **{"Sec-Fetch-Site": "same-origin"})
    assert (r.status_code, r.headers.get("Location")) == (303, "/admin/"), r.text[:300]
    assert site.introspect(g.token) is False
    assert site.revocations() == [f"task:gh:{g.task}"]
    print(f"{case}: {status} {reason}; with the session's token: 303, revoked")


def test_a_grant_is_revoked_alone_and_its_button_goes(site):
    g = site.grant()
    same_task = site.grant(run_id=g.claims["run_id"], run_attempt=g.claims["run_attempt"])
    assert same_task.task == g.task
    sid = site.session()
    jti = jwt_claims(g.token)["jti"]
    r = site.post("/admin/revoke", sid, {"csrf": site.csrf(sid), "kind": "grant", "value": jti})
    assert (r.status_code, r.headers.get("Location")) == (303, "/admin/"), r.text[:300]
    doc = site.doc(sid)
    assert doc.one("p#flash").text == f"Revoked jti:{jti} (1 live grant ended)."
    row = doc.one(f'tr.grant[data-jti="{jti}"]')
    assert row.get("data-status") == "revoked" and row.select("form.revoke-grant") == []
    # the twin: the other grant of the same task is live, and the task is not ended
    other = doc.one(f'tr.grant[data-jti="{jwt_claims(same_task.token)["jti"]}"]')
    assert other.get("data-status") == "active" and len(other.select("form.revoke-grant")) == 1
    assert doc.one(f'tbody.task[data-task="{g.task}"]').get("data-revoked") == "false"
    assert site.introspect(g.token) is False and site.introspect(same_task.token) is True
    # an unknown kind changes nothing
    r = site.post("/admin/revoke", sid, {"csrf": site.csrf(sid), "kind": "everything", "value": "x"})
    assert_refused(r, 400, "invalid_request", "request_invalid")
    assert site.revocations() == [f"jti:{jti}"]


def test_logout_ends_that_session_only(site):
    g = site.grant()
    sid, other = site.session(), site.session()
    csrf = site.csrf(sid)
    # logout needs the session's own token too
    r = site.post("/admin/logout", sid, {"csrf": site.csrf(other)})
    assert_refused(r, 403, "access_denied", "cross_site_request")
    assert site.page(sid).status_code == 200
    r = site.post("/admin/logout", sid, {"csrf": csrf})
    assert (r.status_code, r.headers.get("Location")) == (303, "/admin/login"), r.text[:300]
    assert set_cookie(r).startswith(f"{COOKIE}=;") and "Max-Age=0" in set_cookie(r), r.headers
    r = site.page(sid)
    assert (r.status_code, r.headers.get("Location")) == (303, "/admin/login")
    assert_refused(site.revoke_task(sid, g, csrf), 401, "invalid_client", "session_required")
    assert_nothing_revoked(site, g)
    # the twin: the other session is still open
    assert site.page(other).status_code == 200


def reload(site: Site, config: dict):
    """Writes the config, sends SIGHUP and waits for the broker to log that it reloaded."""
    b = site.broker

    def reloaded() -> int:
        n = 0
        for line in b.stderr().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line still being written
            n += isinstance(e, dict) and e.get("fields", {}).get("message") == RELOADED
        return n

    before = reloaded()
    b.config = config
    b.config_path.write_text(to_toml(config))
    b.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: reloaded() > before, 15, what="the reload logged")


def test_a_new_admin_credential_ends_every_session(site, tmp_path):
    g = site.grant()
    sid = site.session()
    csrf = site.csrf(sid)
    # the twin first: a reload that keeps the credential keeps the session
    reload(site, copy.deepcopy(site.broker.config))
    assert site.page(sid).status_code == 200
    new_file = tmp_path / "admin-next.token"
    new_file.write_text(OTHER_ADMIN_TOKEN + "\n")
    cfg = copy.deepcopy(site.broker.config)
    cfg["admin"]["token_file"] = str(new_file)
    reload(site, cfg)
    r = site.page(sid)
    assert (r.status_code, r.headers.get("Location")) == (303, "/admin/login"), r.headers
    assert_refused(site.revoke_task(sid, g, csrf), 401, "invalid_client", "session_required")
    assert site.login(ADMIN_TOKEN).status_code == 401
    new = session_of(site.login(OTHER_ADMIN_TOKEN))
    assert site.page(new).status_code == 200


def test_a_session_is_this_process_s_own_and_the_audit_s_view_survives_a_restart(
        broker_factory, mock_issuer, tmp_path):
    """Sessions live in the process: a second broker with the same credential does not know the
    first's, and a restart ends them. What the page reads from the audit log (denials, last use)
    is read again at start."""
    a = Site(broker_factory, mock_issuer, tmp_path)
    b = Site(broker_factory, mock_issuer, tmp_path, token_file=a.token_file)
    a.grant()
    denial = a.deny()
    sid = a.session()
    assert a.page(sid).status_code == 200
    r = b.page(sid)
    assert (r.status_code, r.headers.get("Location")) == (303, "/admin/login"), r.headers
    # each replica shows its own audit log's view
    doc_b = b.doc(b.session())
    assert doc_b.select("tr.denial") == []
    assert doc_b.one('tr.role[data-role="deploy"]').get("data-used") == "false"
    # restart a
    a.broker.stop()
    a.broker._start()
    r = a.page(sid)
    assert (r.status_code, r.headers.get("Location")) == (303, "/admin/login"), r.headers
    doc = a.doc(a.session())
    doc.one(f'tr.denial[data-decision-id="{denial}"]')
    assert doc.one('tr.role[data-role="deploy"]').get("data-used") == "true"
    assert doc.one('tr.role[data-role="unused"]').get("data-used") == "false"


def test_the_page_is_on_the_admin_listener_when_there_is_one(broker_factory, mock_issuer, tmp_path):
    s = Site(broker_factory, mock_issuer, tmp_path, admin_listen=True)
    assert s.url != s.broker.url
    for path in ("/admin", "/admin/", "/admin/login"):
        r = requests.get(s.broker.url + path, allow_redirects=False, timeout=30)
        assert r.status_code == 404, (path, r.status_code)
    r = requests.post(s.broker.url + "/admin/login", data={"token": ADMIN_TOKEN}, allow_redirects=False, timeout=30)
    assert r.status_code == 404 and set_cookie(r) is None
    # the twin: on the admin listener
    sid = s.session()
    assert s.page(sid).status_code == 200


# ---- TLS: the cookie is Secure ----------------------------------------------------------------


def self_signed(d: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ephemera inventory test")])
    import ipaddress
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = d / "cert.pem", d / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class HttpsBroker(Broker):
    """`ephemera serve` whose listeners are HTTPS (a self-signed certificate the test trusts)."""

    def __init__(self, *a, ca_file: Path, **kw):
        self.ca_file = ca_file
        super().__init__(*a, **kw)

    @property
    def url(self) -> str:
        return f"https://{self.config['server']['listen']}"

    def _start(self):
        self.config_path.write_text(to_toml(self.config))
        self._out = open(self.stdout_path, "ab")
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([str(self.binary), "serve", "--config", str(self.config_path)],
                                     stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, env=self.env)

        def healthy() -> bool:
            assert self.proc.poll() is None, self.stderr()[-3000:]
            try:
                return requests.get(self.url + "/healthz", timeout=2, verify=str(self.ca_file)).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, STARTUP_TIMEOUT, what="the HTTPS broker healthy")


@pytest.mark.parametrize("admin_listen", [False, True], ids=["main listener", "admin listener"])
def test_the_cookie_is_secure_on_a_tls_listener(ephemera_bin, mock_issuer, tmp_path, admin_listen):
    from harness import broker_config
    cert, key = self_signed(tmp_path / "tls")
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    port = free_port()
    cfg = broker_config(tmp_path / "b", [github_provider("gh", mock_issuer.issuer)],
                        [cloud_role("deploy", "gh", JWT)], port=port,
                        server={"issuer": f"https://127.0.0.1:{port}", "tls_cert_file": str(cert),
                                "tls_key_file": str(key)})
    cfg["admin"] = {"token_file": str(token_file)}
    if admin_listen:
        cfg["admin"]["listen"] = f"127.0.0.1:{free_port()}"
    b = HttpsBroker(ephemera_bin, tmp_path / "b", cfg, ca_file=cert)
    try:
        url = f"https://{cfg['admin']['listen']}" if admin_listen else b.url
        r = requests.post(url + "/admin/login", data={"token": ADMIN_TOKEN}, allow_redirects=False,
                          timeout=30, verify=str(cert))
        sid = session_of(r)
        assert set_cookie(r) == f"{COOKIE}={sid}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=900; Secure", \
            r.headers
        r = requests.get(url + "/admin/", headers=cookie(sid), allow_redirects=False, timeout=30, verify=str(cert))
        assert r.status_code == 200, r.text[:300]
    finally:
        b.stop()


# ---- what the page shows, and never shows --------------------------------------------------------


def test_no_secret_is_ever_in_a_page(site):
    g = site.grant()
    site.deny()
    sid = site.session()
    texts = [requests.get(site.url + "/admin/login", timeout=30).text, site.login("wrong-" + "w" * 40).text,
             site.login("wrong-" + "w" * 40, accept="text/html").text, site.page(sid).text]
    r = site.revoke_task(sid, g, site.csrf(sid))
    assert r.status_code == 303
    texts.append(site.page(sid).text)  # with the flash
    texts.append(site.revoke_task(sid, g, "bad", Accept="text/html").text)  # a refusal page
    for t in texts:
        site.check_secrets(t, sid)
    # nor in the broker's log
    site.check_secrets(site.broker.stderr(), sid)
    # the twin: the check sees a secret when one is there
    with pytest.raises(AssertionError):
        site.check_secrets(texts[2] + g.token)


def test_a_subject_and_a_task_with_markup_are_shown_as_text(broker_factory, mock_issuer, tmp_path):
    """A plain OIDC provider: the subject is the token's `sub` and the task its `jti`, both the
    workload's to choose. The page shows them as text (in an attribute too), and the task's own
    form, read back from the page, ends exactly that task."""
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN)
    b = broker_factory(providers=[provider("ci", mock_issuer.issuer)],
                       roles=[role("deploy", "ci", conditions={"sub": MARKUP_SUB, "ref": "refs/heads/main"})],
                       extra_config={"admin": {"token_file": str(token_file)}})
    s = Site.__new__(Site)  # the page helpers over this broker
    s.broker, s.mock, s.secrets = b, mock_issuer, [ADMIN_TOKEN]
    tokens = {}
    for task in (MARKUP_TASK, "plain-task-1"):
        r = b.exchange(mock_issuer.sign(good_claims(mock_issuer.issuer, sub=MARKUP_SUB, jti=task)))
        assert r.status == 200, r
        tokens[task] = r.json["access_token"]
    r = b.exchange(mock_issuer.sign(good_claims(mock_issuer.issuer, sub=MARKUP_SUB, ref="refs/heads/evil")))
    assert r.reason == "policy_denied", r
    denial = r.decision_id
    sid = s.session()
    r = s.page(sid)
    assert r.status_code == 200
    # no element the workload wrote: the only markup is the page's own
    assert "<script" not in r.text.lower(), "a workload's markup is in the page unescaped"
    assert "&lt;script&gt;" in r.text and "x&quot;&gt;" in r.text, r.text
    doc = parse(r.text)
    assert doc.select("script") == []
    # the twin: the text reads as the workload's claims, character for character
    rows = {row.get("data-jti"): row.one("td.subject").text for row in doc.select("tr.grant")}
    assert sorted(rows) == sorted(jwt_claims(t)["jti"] for t in tokens.values()), rows
    assert set(rows.values()) == {MARKUP_SUB}, rows
    assert sorted(t.get("data-task") for t in doc.select("tbody.task")) == sorted(tokens), doc.select("tbody.task")
    assert MARKUP_SUB in doc.one(f'tr.denial[data-decision-id="{denial}"]').text
    assert MARKUP_SUB in doc.one('tr.role[data-role="deploy"] .workloads').text
    # the markup task's own form, as a browser would send it
    [task] = [t for t in doc.select("tbody.task") if t.get("data-task") == MARKUP_TASK]
    form = task.one("form.revoke-task")
    fields = {i.get("name"): i.get("value") for i in form.select("input")}
    assert fields["value"] == MARKUP_TASK and fields["provider"] == "ci", fields
    r = s.post("/admin/revoke", sid, fields)
    assert r.status_code == 303, r.text[:300]
    assert s.doc(sid).one("p#flash").text == f"Revoked task:ci:{MARKUP_TASK} (1 live grant ended).", r.text
    assert s.introspect(tokens[MARKUP_TASK]) is False and s.introspect(tokens["plain-task-1"]) is True


def test_the_browser_is_driven_without_the_network(tmp_path, browser):
    """The browser the tests drive resolves nothing but loopback (its flags): a page on 127.0.0.1
    loads, a name does not resolve."""
    import http.server
    import threading

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("<!doctype html><p id=p>loopback</p>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path / "www"), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        from selenium.webdriver.common.by import By
        browser.get(f"http://127.0.0.1:{srv.server_port}/index.html")
        assert browser.find_element(By.ID, "p").text == "loopback"
        from selenium.common.exceptions import WebDriverException
        with pytest.raises(WebDriverException, match="ERR_NAME_NOT_RESOLVED"):
            browser.get("http://example.com/")
    finally:
        srv.shutdown()
        srv.server_close()

