"""netstack.phy.fault: seeded loss, corruption, duplication, reordering, limits and delay."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.phy import Device
from netstack.phy.fault import FaultInjector
from netstack.phy.loopback import Loopback, loopback_pair

N = 10_000


def put(dev, data: bytes, now: float = 0.0) -> None:
    dev.transmit(now).consume(len(data), lambda buf: buf.__setitem__(slice(None), data))


def drain(dev, now: float = 0.0) -> list[bytes]:
    out = []
    while (tokens := dev.receive(now)) is not None:
        out.append(tokens[0].consume(bytes))
    return out


def seqno(i: int) -> bytes:
    return i.to_bytes(4, "big") + b"\x5a" * 60


def rx_run(n: int = N, **kw) -> tuple[FaultInjector, list[bytes]]:
    """n frames enter the injector from the inner device (the RX direction only)."""
    inner = Loopback(max_queue=n + 1)
    fi = FaultInjector(inner, **kw)
    for i in range(n):
        put(inner, seqno(i))
    return fi, drain(fi)


def tx_run(n: int = N, **kw) -> tuple[FaultInjector, list[bytes]]:
    """n frames sent through the injector (the TX direction only), read from the inner device."""
    inner = Loopback(max_queue=n * 2 + 1)
    fi = FaultInjector(inner, **kw)
    for i in range(n):
        put(fi, seqno(i))
    return fi, drain(inner)


def test_is_a_device_and_passes_everything_by_default():
    fi, got = rx_run(100)
    assert isinstance(fi, Device)
    assert got == [seqno(i) for i in range(100)]
    assert fi.stats.rx.passed == 100
    fi, got = tx_run(100)
    assert got == [seqno(i) for i in range(100)]
    assert fi.stats.tx.passed == 100


@pytest.mark.parametrize("run", [rx_run, tx_run])
def test_drop_rate(run):
    fi, got = run(drop=0.3, seed=7)
    c = fi.stats.rx if run is rx_run else fi.stats.tx
    assert 0.3 * N - 300 < c.dropped < 0.3 * N + 300  # ~6.6 standard deviations
    assert len(got) == N - c.dropped == c.passed
    # the survivors keep their order
    assert got == sorted(got)


def test_duplicate_rate_and_copies_follow_the_original():
    fi, got = rx_run(duplicate=0.2, seed=3)
    c = fi.stats.rx
    assert 0.2 * N - 250 < c.duplicated < 0.2 * N + 250
    assert len(got) == N + c.duplicated
    assert sorted(set(got)) == [seqno(i) for i in range(N)]
    dups = [a for a, b in zip(got, got[1:], strict=False) if a == b]
    assert len(dups) == c.duplicated


def test_reorder_swaps_neighbours_only():
    fi, got = rx_run(reorder=0.25, seed=11)
    c = fi.stats.rx
    order = [int.from_bytes(f[:4], "big") for f in got]
    assert sorted(order) == list(range(N))  # nothing lost, nothing invented
    swaps = [i for i in range(N - 1) if order[i] > order[i + 1]]
    assert len(swaps) == c.reordered
    for i in swaps:
        assert order[i] == order[i + 1] + 1
    # a held frame blocks the next draw, so the rate is p / (1 + p)
    expected = N * 0.25 / 1.25
    assert expected - 250 < c.reordered < expected + 250


def test_reordered_frame_released_after_interval_without_successor():
    inner = Loopback()
    fi = FaultInjector(inner, reorder=1.0, interval=0.5)
    put(inner, b"only")
    assert fi.receive(0.0) is None
    assert fi.poll_at() == 0.5
    assert fi.receive(0.4) is None
    assert drain(fi, 0.5) == [b"only"]
    assert fi.poll_at() is None


def test_same_seed_same_damage_other_seed_other_damage():
    kw = dict(drop=0.1, corrupt=0.1, duplicate=0.1, reorder=0.1)
    _, a = rx_run(2000, seed=42, **kw)
    _, b = rx_run(2000, seed=42, **kw)
    _, c = rx_run(2000, seed=43, **kw)
    assert a == b
    assert a != c


def test_corrupt_flips_one_byte_after_skip():
    inner = Loopback()
    fi = FaultInjector(inner, corrupt=1.0, corrupt_skip=14, seed=5)
    originals = [bytes(range(i % 200 + 15)) for i in range(200)]
    for f in originals:
        put(inner, f)
        (got,) = drain(fi)
        diff = [i for i in range(len(f)) if f[i] != got[i]]
        assert len(got) == len(f)
        assert len(diff) == 1 and diff[0] >= 14
    assert fi.stats.rx.corrupted == 200
    put(inner, b"\x01" * 14)  # no byte after the skip: left alone
    assert drain(fi) == [b"\x01" * 14]
    assert fi.stats.rx.corrupted == 200


def test_corrupt_rate_changes_bytes():
    fi, got = rx_run(2000, corrupt=0.5, seed=9)
    changed = sum(1 for i, f in enumerate(got) if f != seqno(i))
    assert changed == fi.stats.rx.corrupted
    assert 800 < changed < 1200


def test_max_size_drops_large_frames():
    inner = Loopback()
    fi = FaultInjector(inner, max_size=64)
    put(inner, b"a" * 64)
    put(inner, b"b" * 65)
    assert drain(fi) == [b"a" * 64]
    assert fi.stats.rx.oversize == 1


def test_rate_limit_per_interval_and_direction():
    inner = Loopback(max_queue=100)
    fi = FaultInjector(inner, rate_limit=5, interval=1.0)
    for i in range(20):
        put(inner, seqno(i))
    assert drain(fi, 0.0) == [seqno(i) for i in range(5)]
    assert fi.stats.rx.rate_limited == 15
    for i in range(20, 30):
        put(inner, seqno(i))
    assert drain(fi, 0.5) == []  # same interval, bucket empty
    for i in range(30, 40):
        put(inner, seqno(i))
    assert drain(fi, 1.0) == [seqno(i) for i in range(30, 35)]
    # TX has its own bucket
    for i in range(7):
        put(fi, seqno(i), now=1.0)
    assert fi.stats.tx.passed == 5 and fi.stats.tx.rate_limited == 2


def test_rate_limit_zero_blocks_everything():
    _, got = rx_run(50, rate_limit=0)
    assert got == []


def test_delay_holds_until_due_and_poll_at():
    inner = Loopback()
    fi = FaultInjector(inner, delay=0.5)
    put(inner, b"first")
    assert fi.receive(0.0) is None
    assert fi.poll_at() == 0.5
    put(inner, b"second")
    assert fi.receive(0.2) is None
    assert fi.poll_at() == 0.5
    assert drain(fi, 0.5) == [b"first"]
    assert fi.poll_at() == pytest.approx(0.7)
    assert drain(fi, 0.7) == [b"second"]
    assert fi.stats.rx.delayed == 2


def test_delay_tx_released_by_any_poll():
    a, b = loopback_pair()
    fi = FaultInjector(a, delay=1.0)
    put(fi, b"late", now=0.0)
    assert b.receive(0.0) is None
    assert fi.poll_at() == 1.0
    assert fi.receive(1.0) is None  # the poll pumps the TX queue
    assert drain(b) == [b"late"]
    assert fi.poll_at() is None


def test_tx_backpressure_keeps_frames_queued():
    inner = Loopback(max_queue=2)
    fi = FaultInjector(inner, delay=0.1)
    for i in range(2):
        put(fi, seqno(i))
    assert fi.transmit(0.0) is not None  # inner has room, frames are only delayed
    put(fi, seqno(2))
    fi.flush(0.1)  # two fit, one waits
    assert len(inner.queue) == 2
    assert fi.transmit(0.1) is None  # inner full
    assert drain(inner) == [seqno(0), seqno(1)]
    fi.flush(0.2)
    assert drain(inner) == [seqno(2)]
    assert fi.stats.tx.passed == 3


def test_queue_limit_bounds_held_frames():
    inner = Loopback(max_queue=100)
    fi = FaultInjector(inner, delay=1.0, queue_limit=10)
    for i in range(50):
        put(inner, seqno(i))
    assert fi.receive(0.0) is None
    assert fi.stats.rx.overflow == 40
    assert len(drain(fi, 1.0)) == 10


def test_configure_at_runtime():
    inner = Loopback()
    fi = FaultInjector(inner)
    put(inner, b"x")
    assert drain(fi) == [b"x"]
    fi.configure(drop=1.0)
    put(inner, b"y")
    assert drain(fi) == []
    fi.configure(drop=0.0, duplicate=1.0)
    put(inner, b"z")
    assert drain(fi) == [b"z", b"z"]
    assert fi.config.duplicate == 1.0 and fi.config.drop == 0.0


@pytest.mark.parametrize(
    "kw",
    [
        {"drop": -0.1},
        {"corrupt": 1.5},
        {"reorder": float("nan")},
        {"interval": 0},
        {"delay": -1},
        {"max_size": -1},
        {"rate_limit": -1},
        {"corrupt_skip": -1},
    ],
)
def test_bad_values_rejected(kw):
    with pytest.raises(ValueError):
        FaultInjector(Loopback(), **kw)
    fi = FaultInjector(Loopback(), drop=0.5)
    with pytest.raises(ValueError):
        fi.configure(**kw)
    assert fi.config.drop == 0.5  # unchanged


def odd(frame) -> bool:
    """A `match`: the frames whose first byte is odd."""
    return frame[0] % 2 == 1


@pytest.mark.parametrize("run", [rx_run, tx_run])
def test_match_damages_only_matching_frames(run):
    """Frames `match` rejects pass untouched, in order, counted only as unmatched."""
    fi, got = run(1000, drop=1.0, match=lambda f: f[3] % 2 == 1)  # seqno(i), i odd
    c = fi.stats.rx if run is rx_run else fi.stats.tx
    assert got == [seqno(i) for i in range(0, 1000, 2)]
    assert c.unmatched == len(got) and c.dropped == 1000 - len(got) > 0
    assert c.passed == len(got)


def test_match_leaves_unmatched_frames_undelayed_and_the_dice_alone():
    """An unmatched frame overtakes delayed ones and draws no random number: the damage
    done to the matching frames is the same with or without others among them."""
    inner = Loopback()
    fi = FaultInjector(inner, delay=0.5, match=odd)
    put(inner, b"\x01 late")
    put(inner, b"\x02 now")
    assert drain(fi, 0.0) == [b"\x02 now"] and drain(fi, 0.5) == [b"\x01 late"]
    assert fi.stats.rx.delayed == 1 and fi.stats.rx.unmatched == 1
    frames = [bytes([2 * i + 1]) + b"m" * 20 for i in range(100)]
    kept = []
    for mixed in (False, True):
        inner = Loopback(max_queue=1000)
        fi = FaultInjector(inner, seed=5, drop=0.5, corrupt=0.3, corrupt_skip=1, match=odd)
        for f in frames:
            put(inner, f)
            if mixed:
                put(inner, b"\x00 other")
        kept.append([f for f in drain(fi) if f != b"\x00 other"])
    assert kept[0] == kept[1] and 0 < len(kept[0]) < 100


def test_match_configure_and_bad_values():
    fi = FaultInjector(Loopback(), drop=1.0, match=odd)
    with pytest.raises(ValueError, match="match must be a predicate"):
        fi.configure(match="tcp port 80")  # netstack takes the callable, not the text
    assert fi.config.match is odd
    fi.configure(match=None)
    put(fi.inner, b"\x00")
    assert drain(fi) == [] and fi.stats.rx.dropped == 1


def test_unknown_knob_rejected():
    with pytest.raises(TypeError):
        FaultInjector(Loopback()).configure(lose=0.5)


def test_flood_pull_is_bounded():
    inner = Loopback(max_queue=5000)
    fi = FaultInjector(inner, drop=1.0)
    for i in range(1000):
        put(inner, seqno(i))
    assert fi.receive(0.0) is None
    assert len(inner.queue) == 1000 - 256


def test_both_directions_through_a_loopback():
    fi = FaultInjector(Loopback(), drop=0.5, seed=1)
    for i in range(1000):
        put(fi, seqno(i))
    got = drain(fi)
    assert fi.stats.tx.dropped + fi.stats.tx.passed == 1000
    assert fi.stats.rx.dropped + fi.stats.rx.passed == fi.stats.tx.passed
    assert len(got) == fi.stats.rx.passed
    assert 150 < len(got) < 350


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    drop=st.floats(0, 1),
    duplicate=st.floats(0, 1),
    reorder=st.floats(0, 1),
    rate=st.none() | st.integers(0, 20),
    delay=st.sampled_from([0.0, 0.05, 0.3]),
    frames=st.lists(st.binary(min_size=1, max_size=80), max_size=60),
)
def test_accounting_adds_up(seed, drop, duplicate, reorder, rate, delay, frames):
    """Every frame is passed (once or twice), dropped for a counted reason, or still held."""
    inner = Loopback(max_queue=1000)
    fi = FaultInjector(
        inner,
        seed=seed,
        drop=drop,
        duplicate=duplicate,
        reorder=reorder,
        rate_limit=rate,
        delay=delay,
        max_size=60,
    )
    got = []
    for i, f in enumerate(frames):
        put(inner, f)
        got += drain(fi, i * 0.01)
    got += drain(fi, 100.0)  # everything due, the reorder slot expired
    c = fi.stats.rx
    assert fi.poll_at() is None
    assert len(got) == c.passed
    lost = c.dropped + c.oversize + c.rate_limited + c.overflow
    assert c.passed - c.duplicated == len(frames) - lost
    assert set(got) <= set(frames)
