"""``friend_location`` frames made from a shared head equal ``encode``'s, character for
character, for any user id, coordinates, time and distance."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from geopresence.wire.hot_encode import friend_location_head, friend_location_text
from geopresence.wire.protocol import encode
from geopresence.wire.server_messages import FriendLocation

finite = st.floats(allow_nan=False, allow_infinity=False)


@given(user=st.text(), lat=finite, lon=finite, ts=finite, distances=st.lists(finite, max_size=4))
@example(user='a"\\é\u2028\x00', lat=-0.0, lon=180.0, ts=1.7e9, distances=[0.0, 1e-7, 8046.72])
def test_friend_location_text_equals_encode(
    user: str, lat: float, lon: float, ts: float, distances: list[float]
) -> None:
    head = friend_location_head(user, lat, lon, ts)
    for distance in distances:  # one head serves every recipient of a move
        expected = encode(FriendLocation(user=user, lat=lat, lon=lon, ts=ts, distance_m=distance))
        assert friend_location_text(head, distance) == expected
