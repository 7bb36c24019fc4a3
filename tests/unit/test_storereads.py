"""Window keys and the StartAfter bound that lists them from a start (controllers/storereads)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from modelops.controllers.storereads import start_after, window_start

PREFIX = "ns/sketches/iris/iris-v2/"
TEN_DIGITS = st.integers(1_000_000_000, 9_999_999_999)
POD = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40)


@given(start=TEN_DIGITS, since=st.floats(1_000_000_000, 9_999_999_998), pod=POD)
def test_start_after_lets_through_exactly_the_keys_of_later_starts(
    start: int, since: float, pod: str
) -> None:
    key = f"{PREFIX}{start}-{pod}.json"
    bound = start_after(PREFIX, since)
    assert bound is not None
    # S3 lists the keys sorting after StartAfter (UTF-8 byte order = code point order)
    assert (key > bound) == (start >= math.ceil(since))


def test_a_start_of_other_than_ten_digits_lists_everything() -> None:
    assert start_after(PREFIX, 99_999.5) is None


@given(pod=POD)
def test_keys_not_named_by_a_start_sort_after_every_ten_digit_bound(pod: str) -> None:
    bound = start_after(PREFIX, 9_999_999_999)
    assert bound is not None and f"{PREFIX}latest-{pod}.json" > bound


def test_a_key_names_its_window_start_before_the_pod() -> None:
    assert window_start(f"{PREFIX}1700000005-iris-abc-w0.json") == 1_700_000_005


def test_a_key_not_named_by_ascii_digits_has_no_start() -> None:
    assert [
        window_start(f"{PREFIX}{name}") for name in ("latest.json", "²-pod.json", "-1.json")
    ] == [
        None,
        None,
        None,
    ]
