"""Signing in: pages need a token; the login form trades it for the HttpOnly signed session cookie the API accepts,
and the pages go back to the login form when the session ends (signed out, or its named token removed)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from app.api.auth import COOKIE
from tests.ui.harness import TOKEN, Page, System


def test_wrong_token_stays_on_login_with_an_error_and_the_right_one_reaches_the_page(page: Page) -> None:
    page.open("/?state=failed")
    page.wait(lambda: page.path() == "/login", message="an anonymous page request must go to the login form")
    assert parse_qs(urlsplit(page.driver.current_url).query)["next"] == ["/?state=failed"]

    page.submit_token("not-the-token")
    error = page.wait(lambda: page.text(".form-error"), message="no error shown for a wrong token")
    assert "not valid" in error
    assert page.path() == "/login"
    assert page.driver.get_cookie(COOKIE) is None
    assert page.css("input[name=next]").get_attribute("value") == "/?state=failed"

    page.submit_token(TOKEN)
    page.wait(lambda: page.path() == "/", message="the right token must lead to the page asked for")
    assert page.js("return location.search") == "?state=failed"
    page.wait(lambda: page.text("#live-text").startswith("Live · updated"),
              message="the runs list never loaded through the API with the session cookie")
    assert page.css("#f-state").get_attribute("value") == "failed"
    cookie = page.driver.get_cookie(COOKIE)
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["secure"] is False  # plain http here; https gets Secure
    assert COOKIE not in page.js("return document.cookie")  # scripts cannot read it


def test_sign_out_and_a_lost_session_go_back_to_login(page: Page) -> None:
    page.login("/")
    page.wait(lambda: page.text("#live-text").startswith("Live"), message="runs list not loaded")
    page.css(".signout button").click()
    page.wait(lambda: page.path() == "/login", message="signing out must end on the login form")
    assert page.driver.get_cookie(COOKIE) is None
    page.open("/")
    page.wait(lambda: page.path() == "/login", message="after signing out, pages need the token again")

    # the session disappears while a page is open: its next API call (401) sends the browser to the login form
    page.submit_token(TOKEN)
    page.wait(lambda: page.path() == "/", message="not back on the runs list")
    page.wait(lambda: page.text("#live-text").startswith("Live"), message="runs list not loaded")
    page.driver.delete_cookie(COOKIE)
    page.wait(lambda: page.path() == "/login", timeout=30, message="a 401 from the API must lead to the login form")
    assert parse_qs(urlsplit(page.driver.current_url).query)["next"] == ["/"]


def test_login_redirects_only_to_local_paths_and_sets_a_strict_cookie(system: System) -> None:
    with httpx.Client(base_url=system.base_url, follow_redirects=False, timeout=30) as web:
        resp = web.get("/runs/7?x=1")
        assert resp.status_code == 303 and resp.headers["location"] == "/login?next=%2Fruns%2F7%3Fx%3D1"

        resp = web.post("/login", data={"token": TOKEN, "next": "/runs/7?x=1"})
        assert resp.status_code == 303 and resp.headers["location"] == "/runs/7?x=1"
        cookie = resp.headers["set-cookie"].lower()
        for part in (f"{COOKIE}=", "httponly", "samesite=strict", "path=/"):
            assert part in cookie
        assert "secure" not in cookie and TOKEN not in cookie
        session = web.cookies[COOKIE]
        web.cookies.clear()

        for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", ""):
            resp = web.post("/login", data={"token": TOKEN, "next": evil})
            assert resp.status_code == 303 and resp.headers["location"] == "/", evil

        resp = web.post("/login", data={"token": "nope", "next": '/"><script>x</script>'})
        assert resp.status_code == 401 and "set-cookie" not in resp.headers
        assert "<script>x" not in resp.text and "not valid" in resp.text

        web.cookies.set(COOKIE, TOKEN)  # the token itself is no session
        assert web.get("/runs/7").status_code == 303
        web.cookies.clear()
        web.cookies.set(COOKIE, session)
        assert web.get("/runs/7").status_code == 200
        assert web.get("/api/runs").status_code == 200


def test_a_named_token_signs_in_acts_under_its_name_and_its_removal_ends_the_session(page: Page,
                                                                                        system: System) -> None:
    system.register("nap", "name: nap\ntasks:\n  - {name: z, type: shell, command: 'sleep 60'}\n")
    secret = system.cluster.run_cli("token", "add", "olga", "--role", "operator", check=True).stdout.strip()
    page.open("/")
    page.wait(lambda: page.path() == "/login", message="not sent to the login page")
    page.submit_token(secret)
    page.wait(lambda: page.path() == "/", message="a named token must sign in")
    page.wait(lambda: page.text("#live-text").startswith("Live"), message="runs list not loaded with the session")
    cookie = page.driver.get_cookie(COOKIE)
    assert cookie is not None and secret not in cookie["value"]

    # the browser session acts with the token's role, and the history names the token
    started = page.driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/runs', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-Tideflow-CSRF': '1'},
                            body: JSON.stringify({workflow: 'nap'})})
          .then(r => r.json().then(body => done({status: r.status, id: body.id})));""")
    assert started["status"] == 201, started
    run_id = int(started["id"])
    history = system.http.get(f"/api/runs/{run_id}/history").json()
    assert history[0]["actor"] == "olga"
    page.open(f"/runs/{run_id}")
    page.wait(lambda: "olga" in page.text("body"), message="the run page's history must name the token")

    # removing the token ends the session: the open page's next API call (401) leads to the login form
    system.cluster.run_cli("token", "remove", "olga", check=True)
    page.wait(lambda: page.path() == "/login", timeout=30, message="a removed token's session must end")
    page.open("/")
    page.wait(lambda: page.path() == "/login", message="the old session cookie must no longer open pages")


def test_swagger_ui_renders_from_the_package_with_authorize(page: Page) -> None:
    """/api/docs works without the internet (nothing from a CDN) and offers "Authorize" for the bearer scheme."""
    page.open("/api/docs")
    page.wait(lambda: page.css(".swagger-ui .btn.authorize").is_displayed(), message="no Authorize button")
    page.wait(lambda: len(page.all(".opblock")) >= 8, message="the operations were not rendered")
    assert "POST/api/runs" in page.text(".swagger-ui").replace("\n", "").replace(" ", "")
    loaded = page.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(page.base_url + "/") for url in loaded), loaded
