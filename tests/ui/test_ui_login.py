"""Signing in: pages need the token; the login form trades it for the HttpOnly session cookie the API accepts,
and the pages go back to the login form when the session ends."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from tests.ui.harness import TOKEN, Page, System


def test_wrong_token_stays_on_login_with_an_error_and_the_right_one_reaches_the_page(page: Page) -> None:
    page.open("/?state=failed")
    page.wait(lambda: page.path() == "/login", message="an anonymous page request must go to the login form")
    assert parse_qs(urlsplit(page.driver.current_url).query)["next"] == ["/?state=failed"]

    page.submit_token("not-the-token")
    error = page.wait(lambda: page.text(".form-error"), message="no error shown for a wrong token")
    assert "not valid" in error
    assert page.path() == "/login"
    assert page.driver.get_cookie("tideflow_token") is None
    assert page.css("input[name=next]").get_attribute("value") == "/?state=failed"

    page.submit_token(TOKEN)
    page.wait(lambda: page.path() == "/", message="the right token must lead to the page asked for")
    assert page.js("return location.search") == "?state=failed"
    page.wait(lambda: page.text("#live-text").startswith("Live · updated"),
              message="the runs list never loaded through the API with the session cookie")
    assert page.css("#f-state").get_attribute("value") == "failed"
    cookie = page.driver.get_cookie("tideflow_token")
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["secure"] is False  # plain http here; https gets Secure
    assert "tideflow_token" not in page.js("return document.cookie")  # scripts cannot read it


def test_sign_out_and_a_lost_session_go_back_to_login(page: Page) -> None:
    page.login("/")
    page.wait(lambda: page.text("#live-text").startswith("Live"), message="runs list not loaded")
    page.css(".signout button").click()
    page.wait(lambda: page.path() == "/login", message="signing out must end on the login form")
    assert page.driver.get_cookie("tideflow_token") is None
    page.open("/")
    page.wait(lambda: page.path() == "/login", message="after signing out, pages need the token again")

    # the session disappears while a page is open: its next API call (401) sends the browser to the login form
    page.submit_token(TOKEN)
    page.wait(lambda: page.path() == "/", message="not back on the runs list")
    page.wait(lambda: page.text("#live-text").startswith("Live"), message="runs list not loaded")
    page.driver.delete_cookie("tideflow_token")
    page.wait(lambda: page.path() == "/login", timeout=30, message="a 401 from the API must lead to the login form")
    assert parse_qs(urlsplit(page.driver.current_url).query)["next"] == ["/"]


def test_login_redirects_only_to_local_paths_and_sets_a_strict_cookie(system: System) -> None:
    with httpx.Client(base_url=system.base_url, follow_redirects=False, timeout=30) as web:
        resp = web.get("/runs/7?x=1")
        assert resp.status_code == 303 and resp.headers["location"] == "/login?next=%2Fruns%2F7%3Fx%3D1"

        resp = web.post("/login", data={"token": TOKEN, "next": "/runs/7?x=1"})
        assert resp.status_code == 303 and resp.headers["location"] == "/runs/7?x=1"
        cookie = resp.headers["set-cookie"].lower()
        for part in ("tideflow_token=test-token", "httponly", "samesite=strict", "path=/"):
            assert part in cookie
        assert "secure" not in cookie

        for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", ""):
            resp = web.post("/login", data={"token": TOKEN, "next": evil})
            assert resp.status_code == 303 and resp.headers["location"] == "/", evil

        resp = web.post("/login", data={"token": "nope", "next": '/"><script>x</script>'})
        assert resp.status_code == 401 and "set-cookie" not in resp.headers
        assert "<script>x" not in resp.text and "not valid" in resp.text

        web.cookies.set("tideflow_token", TOKEN)
        assert web.get("/runs/7").status_code == 200
        assert web.get("/api/runs").status_code == 200
