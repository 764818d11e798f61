"""The console in a real browser, as people use it: two people (a browser context each) sign
in, see each other's presence, positions on the radar and messages, through reloads and a
connection that drops. Only the page's documented hooks are used (docs/console.md).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.browser.conftest import OFFLINE_AFTER, Pages, Served, serve, sign_in, static_site

if TYPE_CHECKING:
    from playwright.sync_api import Geolocation, Page, WebSocketRoute

HOME = (37.7880, -122.4075)
EARTH_RADIUS_M = 6_371_008.8


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect

    return expect(locator)


def at(place: tuple[float, float]) -> Geolocation:
    return {"latitude": place[0], "longitude": place[1]}


def north_of(place: tuple[float, float], metres: float) -> Geolocation:
    return at((place[0] + math.degrees(metres / EARTH_RADIUS_M), place[1]))


def east_of(place: tuple[float, float], metres: float) -> Geolocation:
    lon = place[1] + math.degrees(metres / EARTH_RADIUS_M / math.cos(math.radians(place[0])))
    return at((place[0], lon))


def distance_of(page: Page, user: str) -> float:
    return float(page.locator(f"[data-nearby={user}]").get_attribute("data-distance-m") or "nan")


def dot_offset(page: Page, user: str) -> tuple[float, float]:
    """(x, y) of a radar dot from the radar's centre, in pixels (y grows downwards)."""
    radar = page.locator("[data-radar]").bounding_box()
    dot = page.locator(f"[data-nearby={user}] circle").bounding_box()
    assert radar is not None and dot is not None
    return (
        dot["x"] + dot["width"] / 2 - (radar["x"] + radar["width"] / 2),
        dot["y"] + dot["height"] / 2 - (radar["y"] + radar["height"] / 2),
    )


def test_a_friend_appears_online_and_goes_offline(pages: Pages, server: Served, names: Any) -> None:
    alice, bob = names("alice", "bob")
    server.befriend(alice, bob)
    a = sign_in(pages.new(), server, user=alice)
    assert a.locator("[data-signin] input[name=token]").count() == 0  # only the one in use
    friend = a.locator(f"[data-friend={bob}]")
    expect(friend).to_have_attribute("data-status", "offline")
    b = sign_in(pages.new(), server, user=bob)
    expect(friend).to_have_attribute("data-status", "online")
    expect(b.locator(f"[data-friend={alice}]")).to_have_attribute("data-status", "online")
    b.locator("[data-signout]").click()  # a logout: offline at once, not after the grace
    expect(friend).to_have_attribute("data-status", "offline")
    expect(friend).to_contain_text("last seen")
    expect(b.locator("[data-signin]")).to_be_visible()


def test_radar_dots_appear_at_the_distance_move_and_leave(
    pages: Pages, server: Served, names: Any
) -> None:
    """Both pages have geolocation granted: each sends it right after sign-in, no click, and
    bob's page follows his position as it changes."""
    alice, bob = names("alice", "bob")
    server.befriend(alice, bob)
    a = sign_in(pages.new(geolocation=at(HOME), permissions=["geolocation"]), server, user=alice)
    expect(a.locator("[data-position]")).to_contain_text("from your browser")
    b = sign_in(
        pages.new(geolocation=north_of(HOME, 1500), permissions=["geolocation"]), server, user=bob
    )
    dot = a.locator(f"[data-nearby={bob}]")
    expect(dot).to_have_attribute("data-distance-m", "1500")
    expect(a.locator(f"[data-friend={bob}]")).to_contain_text("0.9 mi")
    x, y = dot_offset(a, bob)
    assert y < 0 and abs(x) < 3, (x, y)  # north: straight up
    b.context.set_geolocation(east_of(HOME, 3000))  # followed: a new location, no click
    expect(dot).to_have_attribute("data-distance-m", "3000")
    a.wait_for_timeout(1000)  # the dot glides to its place (CSS transition)
    x2, y2 = dot_offset(a, bob)
    assert x2 > 0 and abs(y2) < 3, (x2, y2)  # east
    assert abs(math.hypot(x2, y2) - 2 * math.hypot(x, y)) < 3  # twice as far from the centre
    # Alice clicks half-way to bob on her radar: she moves there, bob is 1500 m away again.
    radar = a.locator("[data-radar]").bounding_box()
    assert radar is not None
    centre = (radar["x"] + radar["width"] / 2, radar["y"] + radar["height"] / 2)
    a.mouse.click(centre[0] + x2 / 2, centre[1] + y2 / 2)
    expect(a.locator("[data-position]")).to_contain_text("set by hand")
    distance = float(dot.get_attribute("data-distance-m") or "nan")
    for _ in range(50):
        distance = distance_of(a, bob)
        if abs(distance - 1500) < 60:  # a click is a pixel: ~27 m on this radar
            break
        a.wait_for_timeout(100)
    assert abs(distance - 1500) < 60, distance
    # Bob stops sharing his location: his dot leaves alice's radar.
    b.locator("[data-settings] input[name=share_location]").uncheck()
    expect(dot).to_have_count(0)
    expect(a.locator(f"[data-friend={bob}]")).to_have_attribute("data-status", "online")


def test_a_message_shows_on_both_pages_and_survives_a_reload(
    pages: Pages, server: Served, names: Any
) -> None:
    alice, bob = names("alice", "bob")
    server.befriend(alice, bob)
    a = sign_in(pages.new(), server, user=alice)
    b = sign_in(pages.new(), server, user=bob)
    a.locator(f"[data-friend={bob}]").click()
    a.locator("[data-composer] input[name=text]").fill("lunch at noon?")
    a.locator("[data-composer] input[name=text]").press("Enter")
    mine = a.locator("[data-message-id]", has_text="lunch at noon?")
    expect(mine).to_have_count(1)
    message_id = mine.get_attribute("data-message-id")
    assert message_id and message_id.isdigit()
    theirs = b.locator(f"[data-message-id='{message_id}']")
    expect(theirs).to_contain_text("lunch at noon?")
    for page in (a, b):
        page.reload()  # signs in again by itself (same tab, same device), then syncs
        expect(page.locator("[data-connection-pill]")).to_have_attribute("data-state", "open")
        expect(page.locator(f"[data-message-id='{message_id}']")).to_have_count(1)
    b.locator(f"[data-friend={alice}]").click()
    expect(b.locator(f"[data-message-id='{message_id}']")).to_be_visible()


def test_a_dropped_and_restored_connection_does_not_flap_presence(
    pages: Pages, server: Served, names: Any
) -> None:
    """Bob's network goes silent (frames stop in both directions, the socket stays "open"):
    his page notices the missing heartbeat replies, reconnects with the same device, and
    alice's page never shows him offline, also after the grace window has passed."""
    alice, bob = names("alice", "bob")
    server.befriend(alice, bob)
    a = sign_in(pages.new(), server, user=alice)
    friend = a.locator(f"[data-friend={bob}]")
    b = pages.new()
    hellos: list[str] = []
    links: list[dict[str, Any]] = []

    def relay(page_side: WebSocketRoute) -> None:
        link = {"cut": False}
        links.append(link)
        server_side = page_side.connect_to_server()

        def to_server(message: str | bytes) -> None:
            if not link["cut"]:
                if isinstance(message, str) and '"hello"' in message:
                    hellos.append(message)
                server_side.send(message)

        def to_page(message: str | bytes) -> None:
            if not link["cut"]:
                page_side.send(message)

        page_side.on_message(to_server)
        server_side.on_message(to_page)

    b.route_web_socket(server.ws_url, relay)
    sign_in(b, server, user=bob)
    expect(friend).to_have_attribute("data-status", "online")
    a.evaluate(
        """(user) => {
            window.__flaps = [];
            const row = document.querySelector(`[data-friend="${user}"]`);
            new MutationObserver(() => window.__flaps.push(row.dataset.status))
                .observe(row, {attributes: true, attributeFilter: ["data-status"]});
        }""",
        bob,
    )
    b.evaluate(
        """() => {
            window.__states = [];
            const pill = document.querySelector("[data-connection-pill]");
            new MutationObserver(() => window.__states.push(pill.dataset.state))
                .observe(pill, {attributes: true, attributeFilter: ["data-state"]});
        }"""
    )
    links[0]["cut"] = True
    for _ in range(100):  # two heartbeat intervals, then at once a new connection
        if len(hellos) == 2:
            break
        b.wait_for_timeout(50)
    expect(b.locator("[data-connection-pill]")).to_have_attribute("data-state", "open")
    assert b.evaluate("window.__states") == ["reconnecting", "open"]
    assert len(links) == 2 and len(hellos) == 2
    assert hellos[0] == hellos[1], hellos  # the same user and device
    a.wait_for_timeout(int(OFFLINE_AFTER * 1000) + 500)  # past the grace window
    assert a.evaluate("window.__flaps") == []
    expect(friend).to_have_attribute("data-status", "online")


def test_people_nearby_only_when_opted_in_with_rounded_distances(
    pages: Pages, server: Served, names: Any
) -> None:
    carol, zoe = names("carol", "zoe")  # not friends: strangers to each other
    c = sign_in(pages.new(geolocation=at(HOME), permissions=["geolocation"]), server, user=carol)
    expect(c.locator("[data-position]")).to_contain_text("from your browser")
    z = sign_in(
        pages.new(geolocation=east_of(HOME, 1234), permissions=["geolocation"]), server, user=zoe
    )
    expect(z.locator("[data-position]")).to_contain_text("from your browser")
    c.locator("[data-watch-strangers]").check()
    c.wait_for_timeout(300)
    assert c.locator(f"[data-stranger={zoe}]").count() == 0  # zoe did not opt in
    z.locator("[data-settings] input[name=visible_to_strangers]").check()
    stranger = c.locator(f"[data-stranger={zoe}]")
    expect(stranger).to_have_count(1)
    distance = int(stranger.get_attribute("data-distance-m") or "-1")
    assert distance % 100 == 0 and abs(distance - 1234) <= 150, distance
    assert c.locator(f"[data-nearby={zoe}]").count() == 0  # never on the friends' radar


def test_settings_show_and_change_the_radius(pages: Pages, server: Served, names: Any) -> None:
    (dave,) = names("dave")
    d = sign_in(pages.new(), server, user=dave)
    radius = d.locator("[data-settings] select[name=radius_m]")
    expect(radius).to_have_value("8046.72")
    radius.select_option("3218.688")
    d.reload()
    expect(d.locator("[data-connection-pill]")).to_have_attribute("data-state", "open")
    expect(radius).to_have_value("3218.688")  # read back from the server after the reload


def test_the_page_runs_under_its_content_security_policy(
    pages: Pages, server: Served, names: Any
) -> None:
    (erin,) = names("erin")
    response = pages.new().request.get(f"{server.http_url}/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    page = sign_in(pages.new(), server, user=erin)
    page.locator("[data-coords-form] input[name=lat]").fill(str(HOME[0]))
    page.locator("[data-coords-form] input[name=lon]").fill(str(HOME[1]))
    page.locator("[data-coords-form] button").click()
    expect(page.locator("[data-position]")).to_contain_text("37.78800")
    assert page.evaluate("window.__csp") == []


def test_a_page_of_another_origin_cannot_open_a_socket(
    pages: Pages, server: Served, tmp_path: Path
) -> None:
    """The WebSocket endpoint checks Origin (--allowed-origins, default: the console's own
    pages): a page elsewhere (here another port of this machine) is refused with 403."""
    probe = """(url) => new Promise((resolve) => {
        const ws = new WebSocket(url);
        ws.onopen = () => { ws.close(); resolve("open"); };
        ws.onclose = () => resolve("refused");
    })"""
    page = pages.new()
    page.goto(f"{server.http_url}/console/config.json")  # the server's own origin
    assert page.evaluate(probe, server.ws_url) == "open"
    page.goto(f"http://localhost:{server.http_port}/console/config.json")
    assert page.evaluate(probe, f"ws://localhost:{server.ws_port}/ws") == "open"
    (tmp_path / "index.html").write_text("<!doctype html><title>elsewhere</title>")
    before = _forbidden(server)
    with static_site(tmp_path) as elsewhere:
        page.goto(f"{elsewhere}/index.html")
        assert page.evaluate(probe, server.ws_url) == "refused"
    assert _forbidden(server) == before + 1  # refused by the server, not by the browser


def _forbidden(server: Served) -> int:
    metrics = server.http.get("/metrics").text
    found = re.search(r'^geopresence_errors_total\{code="forbidden"\} (\d+)$', metrics, re.M)
    return int(found[1]) if found else 0


def test_logged_out_elsewhere_the_page_shows_the_form_and_why(
    pages: Pages, server: Served, names: Any
) -> None:
    (frank,) = names("frank")
    page = sign_in(pages.new(), server, user=frank)
    server.http.post(f"/v1/users/{frank}/logout").raise_for_status()  # the backend (4001)
    expect(page.locator("[data-signin]")).to_be_visible()
    expect(page.locator("[data-signin-error]")).to_contain_text("Signed out: logged out")
    page.reload()
    expect(page.locator("[data-signin]")).to_be_visible()  # not signed in again


def test_dragging_the_radar_moves_me_the_other_way(
    pages: Pages, server: Served, names: Any
) -> None:
    (grace,) = names("grace")
    page = sign_in(pages.new(), server, user=grace, query=f"?at={HOME[0]},{HOME[1]}")
    position = page.locator("[data-position]")
    expect(position).to_contain_text(f"{HOME[0]:.5f}, {HOME[1]:.5f} · from the link")
    radar = page.locator("[data-radar]").bounding_box()
    assert radar is not None
    x, y = radar["x"] + radar["width"] / 2, radar["y"] + radar["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y, steps=6)  # the map goes east: I go west
    page.mouse.up()
    expect(position).to_contain_text("set by hand")
    lat, lon = (float(v) for v in (position.text_content() or "").split(" · ")[0].split(", "))
    assert abs(lat - HOME[0]) < 1e-4 and lon < HOME[1] - 0.005, (lat, lon)


def test_many_conversations_stay_readable_and_scroll(
    pages: Pages, server: Served, names: Any
) -> None:
    """A conversation per friend: with more than the chat's height holds, each button keeps
    its height (the list scrolls) instead of being squeezed to a blank sliver."""
    (ivan,) = names("ivan")
    friends = [f"{ivan}-friend{i:02d}" for i in range(40)]
    server.http.post("/v1/friendships", json={"pairs": [[ivan, f] for f in friends]})
    page = sign_in(pages.new(), server, user=ivan)
    expect(page.locator("[data-conversation-button]")).to_have_count(40)
    squeezed = page.evaluate(
        """() => [...document.querySelectorAll('[data-conversation-button]')]
            .filter((b) => b.scrollHeight > b.clientHeight || b.clientHeight < 20)
            .map((b) => b.getAttribute('data-conversation-button'))"""
    )
    assert squeezed == []
    last = page.locator(f"[data-conversation-button='u:{friends[-1]}']")
    last.scroll_into_view_if_needed()
    expect(last).to_be_in_viewport()
    last.click()
    expect(page.locator("[data-thread-title]")).to_have_text(friends[-1])


def test_a_long_name_leaves_the_distance_readable(pages: Pages, server: Served, names: Any) -> None:
    """User ids run to 64 characters: the name is cut short in its row, never over the
    distance beside it nor out of the card."""
    judy, long = names("judy", "l")
    long = (long + "-" + "w" * 64)[:64]
    server.befriend(judy, long)
    j = sign_in(pages.new(), server, user=judy, query=f"?at={HOME[0]},{HOME[1]}")
    near = north_of(HOME, 1000)
    sign_in(pages.new(), server, user=long, query=f"?at={near['latitude']},{near['longitude']}")
    far = j.locator(f"[data-friend={long}] .far")
    expect(far).to_have_text("0.6 mi")
    box = j.evaluate(
        """(user) => {
            const row = document.querySelector(`[data-friend="${user}"]`);
            const r = (el) => el.getBoundingClientRect();
            const name = row.querySelector('strong');
            const clipped = name.scrollWidth <= name.clientWidth
                || getComputedStyle(name).overflowX !== 'visible';
            return {name: r(name), far: r(row.querySelector('.far')), list: r(row.closest('ul')),
                    clipped, title: name.title};
        }""",
        long,
    )
    assert box["clipped"] and box["name"]["right"] <= box["far"]["left"], box
    assert box["title"] == long  # the whole name on hover
    assert box["far"]["right"] <= box["list"]["right"] and box["far"]["height"] < 20, box
    # On the radar too: the label is cut to fit, the whole id on hover.
    dot = j.locator(f"[data-nearby={long}]")
    expect(dot.locator("text").first).to_have_text(long[:15] + "…")
    expect(dot.locator("title")).to_have_text(long)


def test_a_tab_opened_from_the_console_is_another_device(
    pages: Pages, server: Served, names: Any
) -> None:
    """A tab opened from this one (window.open, the browser's "Duplicate tab") starts with
    a copy of its sessionStorage, device id included: it must pick its own device, not
    replace this tab's connection (4002, which signed this tab out). A reload keeps it."""
    kate, leo = names("kate", "leo")
    server.befriend(kate, leo)
    first = sign_in(pages.new(), server, user=kate)
    device = first.evaluate("sessionStorage.getItem('geopresence.device')")
    with first.context.expect_page() as opened:
        first.evaluate("window.open(location.href)")
    second = opened.value
    expect(second.locator("[data-connection-pill]")).to_have_attribute("data-state", "open")
    assert second.evaluate("sessionStorage.getItem('geopresence.device')") != device
    first.wait_for_timeout(500)
    expect(first.locator("[data-connection-pill]")).to_have_attribute("data-state", "open")
    first.reload()
    expect(first.locator("[data-connection-pill]")).to_have_attribute("data-state", "open")
    assert first.evaluate("sessionStorage.getItem('geopresence.device')") == device
    expect(second.locator("[data-connection-pill]")).to_have_attribute("data-state", "open")


def test_the_first_message_shows_without_taking_the_keyboard(
    pages: Pages, server: Served, names: Any
) -> None:
    """The first live message opens its conversation, but typing elsewhere (coordinates,
    a group id) goes on there: it must not jump into the message box (where Enter would
    send the rest of it to that friend)."""
    mia, ned = names("mia", "ned")
    server.befriend(mia, ned)
    m = sign_in(pages.new(), server, user=mia)
    n = sign_in(pages.new(), server, user=ned)
    lat = m.locator("[data-coords-form] input[name=lat]")
    lat.click()
    lat.press_sequentially("37.7")
    n.locator(f"[data-friend={mia}]").click()
    n.locator("[data-composer] input[name=text]").fill("hi")
    n.locator("[data-composer] input[name=text]").press("Enter")
    expect(m.locator("[data-message-id]", has_text="hi")).to_be_visible()  # opened
    m.keyboard.type("88")
    expect(lat).to_have_value("37.788")
    expect(m.locator("[data-composer] input[name=text]")).to_have_value("")


def test_the_radius_offers_only_what_the_server_allows(pages: Pages, tmp_path: Path) -> None:
    """With --max-radius 5000 the 5, 10 and 20 mile choices would only be refused."""
    small = serve(tmp_path, "--insecure", "--radius", "3000", "--max-radius", "5000")
    try:
        page = sign_in(pages.new(), small, user="olga")
        radius = page.locator("[data-settings] select[name=radius_m]")
        expect(radius).to_have_value("3000")  # the server's --radius
        values = [float(v) for v in radius.locator("option").evaluate_all(
            "(options) => options.map((o) => o.value)")]  # fmt: skip
        assert max(values) <= 5000, values
    finally:
        small.stop()
