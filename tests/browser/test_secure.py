"""The console and the admin view against a secure server: tokens to sign in, the admin key
for the admin view, kept in the tab's session only."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import ADMIN_KEY, Pages, Served, sign_in


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect

    return expect(locator)


def test_sign_in_with_tokens(pages: Pages, secure: Served, names: Any) -> None:
    alice, bob = names("alice", "bob")
    secure.befriend(alice, bob)
    a = pages.new()
    a.goto(f"{secure.http_url}/")
    expect(a.locator("[data-signin] input[name=token]")).to_be_visible()
    expect(a.locator("[data-signin] input[name=user]")).to_have_count(0)
    a.locator("[data-signin] input[name=token]").fill("not-a-token")
    a.locator("[data-signin] button[type=submit]").click()
    expect(a.locator("[data-signin-error]")).to_contain_text("Refused")
    sign_in(a, secure, token=secure.token(alice))
    expect(a.locator("[data-me]")).to_have_text(alice)  # the token's user, from the welcome
    sign_in(pages.new(), secure, token=secure.token(bob))
    expect(a.locator(f"[data-friend={bob}]")).to_have_attribute("data-status", "online")
    a.reload()  # the token is in this tab's sessionStorage: signed in again
    expect(a.locator("[data-connection-pill]")).to_have_attribute("data-state", "open")


def test_the_admin_view_shows_live_figures_and_keeps_the_key_in_the_tab(
    pages: Pages, secure: Served, names: Any
) -> None:
    (carol,) = names("carol")
    page = pages.new()
    page.goto(f"{secure.http_url}/admin?refresh=0.3")
    form = page.locator("[data-admin-signin]")
    form.locator("input[name=key]").fill("wrong")
    form.locator("button[type=submit]").click()
    expect(page.locator("[data-admin-error]")).to_contain_text("Wrong admin key")
    form.locator("input[name=key]").fill(ADMIN_KEY)
    form.locator("button[type=submit]").click()
    users = page.locator("[data-stat=geopresence_users_online] .value")
    expect(users).to_have_text("0")
    sign_in(pages.new(), secure, token=secure.token(carol))
    expect(users).to_have_text("1")  # refreshed without a reload
    expect(page.locator("[data-stat=geopresence_connections] .value")).to_have_text("1")
    expect(page.locator("[data-metric=geopresence_messages_in_total]")).to_be_attached()
    expect(page.locator("[data-stat=geopresence_messages_in_total] .value")).not_to_have_text("–")
    assert page.evaluate("Object.keys(localStorage).length") == 0
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("sessionStorage.getItem('geopresence.admin_key')") == ADMIN_KEY
    page.reload()
    expect(users).to_have_text("1")  # this tab still has it
    fresh = pages.new()
    fresh.goto(f"{secure.http_url}/admin")  # another tab (and browser): asked again
    expect(fresh.locator("[data-admin-signin]")).to_be_visible()
    page.locator("[data-forget]").click()
    expect(page.locator("[data-admin-signin]")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('geopresence.admin_key')") is None


def test_the_admin_view_with_a_refresh_that_is_not_a_number_polls_every_2_s(
    pages: Pages, secure: Served
) -> None:
    """``?refresh=`` that is not a number falls back to 2 s (it made the view fetch
    /metrics back to back, as fast as the server answered)."""
    page = pages.new()
    polls: list[str] = []

    def count(request: Any) -> None:
        if "/metrics" in request.url:
            polls.append(request.url)

    page.on("request", count)
    page.goto(f"{secure.http_url}/admin?refresh=soon")
    form = page.locator("[data-admin-signin]")
    form.locator("input[name=key]").fill(ADMIN_KEY)
    form.locator("button[type=submit]").click()
    expect(page.locator("[data-stat=geopresence_users_online] .value")).to_be_visible()
    page.wait_for_timeout(1500)
    assert len(polls) <= 2, f"{len(polls)} polls of /metrics in 1.5 s"


def test_forget_key_while_a_poll_is_on_its_way_stays_signed_out(
    pages: Pages, secure: Served
) -> None:
    """*Forget key* while a /metrics fetch is on its way: its late answer must not show the
    view again (and the poll after it, without a key, say "Wrong admin key")."""
    page = pages.new()
    page.add_init_script(
        """const fetch0 = window.fetch;
        window.__held = null; // set to [] to hold /metrics answers until __release()
        window.__release = () => {
            const held = window.__held;
            window.__held = null;
            held.forEach((r) => r());
        };
        window.fetch = (url, options) => String(url).includes('/metrics') && window.__held
            ? new Promise((r) => window.__held.push(r)).then(() => fetch0(url, options))
            : fetch0(url, options);"""
    )
    page.goto(f"{secure.http_url}/admin?refresh=0.25")
    form = page.locator("[data-admin-signin]")
    form.locator("input[name=key]").fill(ADMIN_KEY)
    form.locator("button[type=submit]").click()
    expect(page.locator("[data-admin-view]")).to_be_visible()
    page.evaluate("window.__held = []")
    for _ in range(100):  # the next poll is on its way (no wait_for_function: CSP, no eval)
        if page.evaluate("window.__held.length") > 0:
            break
        page.wait_for_timeout(20)
    page.locator("[data-forget]").click()
    page.evaluate("window.__release()")
    page.wait_for_timeout(800)
    expect(page.locator("[data-admin-signin]")).to_be_visible()
    expect(page.locator("[data-admin-error]")).to_have_text("")
