"""The SDK as an application sees it: events delivered once with stable ids, through outages and restarts."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plg_sdk import DROP_OLDEST, Client
from plg_sdk._uuid7 import uuid7

from tests.unit.sdk.sdk_test_server import FakeIngest, accept_all

KEY = "plg_testkey_" + "s" * 43


@pytest.fixture
def ingest() -> Iterator[FakeIngest]:
    fake = FakeIngest().start()
    yield fake
    fake.stop()


def client(url: str, tmp_path: Path, **kw: Any) -> Client:
    opts: dict[str, Any] = {
        "flush_interval": 0.05,
        "backoff_base": 0.05,
        "backoff_max": 0.2,
        "register_atexit": False,
        "queue_dir": tmp_path / "queue",
    }
    opts.update(kw)
    return Client(KEY, url, **opts)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_tracked_events_arrive_in_gzipped_batches_with_the_key_and_uuid7_ids(
    ingest: FakeIngest, tmp_path: Path
) -> None:
    c = client(ingest.url, tmp_path, flush_at=10)
    ids = [c.track("api_call", {"n": i, "ok": True, "model": "l", "cost": 0.5}) for i in range(25)]
    assert c.flush(timeout=10)
    c.close()
    assert ingest.accepted_ids() == ids
    first = ingest.requests[0]
    assert first.headers["Authorization"] == f"Bearer {KEY}"
    assert first.headers["Content-Encoding"] == "gzip"
    assert first.headers["User-Agent"].startswith("plg-sdk-python/")
    assert all(len(r.events) <= 10 for r in ingest.requests)
    assert {uuid.UUID(i).version for i in ids} == {7}
    assert ingest.requests[0].events[3]["properties"] == {"n": 3, "ok": True, "model": "l", "cost": 0.5}
    assert c.stats.sent == 25


def test_identify_links_the_anonymous_id_and_later_events_carry_the_user_id(
    ingest: FakeIngest, tmp_path: Path
) -> None:
    c = client(ingest.url, tmp_path)
    anon = c.anonymous_id
    c.track("before_login")
    c.identify("user-42", {"plan": "pro"})
    c.track("after_login")
    assert c.flush(timeout=10)
    c.close()
    before, ident, after = [e for r in ingest.requests for e in r.events]
    assert before["anonymous_id"] == anon
    assert before["user_id"] is None
    assert ident["type"] == "identify"
    assert (ident["anonymous_id"], ident["user_id"]) == (anon, "user-42")
    assert (after["anonymous_id"], after["user_id"]) == (anon, "user-42")
    # the identity survives a restart of the client
    again = client(ingest.url, tmp_path)
    assert (again.anonymous_id, again.user_id) == (anon, "user-42")
    again.reset()
    assert again.user_id is None
    assert again.anonymous_id != anon
    again.close()


def test_503_with_retry_after_is_honoured_and_the_retry_reuses_the_event_ids(
    ingest: FakeIngest, tmp_path: Path
) -> None:
    ingest.script = [lambda ev: (503, {"Retry-After": "1"}, {"code": "kafka_unavailable", "message": "down"})]
    c = client(ingest.url, tmp_path)
    ids = [c.track("e", {"i": i}) for i in range(5)]
    start = time.monotonic()
    assert c.flush(timeout=10)
    elapsed = time.monotonic() - start
    c.close()
    assert elapsed >= 1.0  # waited for Retry-After, not the 50 ms backoff
    assert [r.answered for r in ingest.requests] == [503, 202]
    assert ingest.requests[0].events == ingest.requests[1].events
    assert ingest.accepted_ids() == ids
    assert c.stats.retries == 1


def test_a_lost_acknowledgement_is_retried_with_the_same_ids_never_new_ones(
    ingest: FakeIngest, tmp_path: Path
) -> None:
    # The server reads the batch and hangs up without answering (as if ingest died after writing it).
    ingest.script = [lambda ev: None, lambda ev: None, accept_all]
    c = client(ingest.url, tmp_path)
    ids = [c.track("e", {"i": i}) for i in range(7)]
    assert c.flush(timeout=10)
    c.close()
    sent = ingest.all_sent_ids()
    assert len(sent) == 21  # three attempts of the same seven
    assert set(sent) == set(ids)
    assert ingest.accepted_ids() == ids


def test_events_queued_while_ingest_is_down_are_delivered_by_the_next_client(
    ingest: FakeIngest, tmp_path: Path
) -> None:
    down = client(closed_port_url(), tmp_path)
    ids = [down.track("offline", {"i": i}) for i in range(30)]
    assert not down.flush(timeout=0.3)
    down.close(timeout=0.2)
    assert down.stats.sent == 0
    # a new client (as after a process restart) on the same queue directory, with ingest back
    up = client(ingest.url, tmp_path)
    assert up.pending() == 30
    assert up.flush(timeout=10)
    up.close()
    assert ingest.accepted_ids() == ids


def test_per_event_rejections_are_counted_and_not_retried(ingest: FakeIngest, tmp_path: Path) -> None:
    def reject_second(events: list[dict[str, Any]]) -> Any:
        status, headers, body = accept_all(events)
        body["results"][1] = {
            "index": 1,
            "event_id": events[1]["event_id"],
            "status": "rejected",
            "code": "timestamp_too_old",
            "message": "old",
        }
        return status, headers, body

    ingest.script = [reject_second]
    c = client(ingest.url, tmp_path, flush_at=3)
    for i in range(3):
        c.track("e", {"i": i})
    assert c.flush(timeout=10)
    c.close()
    assert len(ingest.requests) == 1
    assert (c.stats.sent, c.stats.rejected) == (2, 1)


def test_a_batch_refused_as_too_large_is_split_and_delivered(ingest: FakeIngest, tmp_path: Path) -> None:
    ingest.script = [lambda ev: (413, {}, {"code": "batch_too_large", "message": "big"})]
    c = client(ingest.url, tmp_path, flush_at=8, flush_interval=5)
    ids = [c.track("e", {"i": i}) for i in range(8)]
    assert c.flush(timeout=10)
    c.close()
    assert [len(r.events) for r in ingest.requests][:2] == [8, 4]
    assert ingest.accepted_ids() == ids


def test_a_400_for_the_batch_drops_it_with_a_count(ingest: FakeIngest, tmp_path: Path) -> None:
    ingest.script = [lambda ev: (400, {}, {"code": "invalid_body", "message": "nope"})]
    c = client(ingest.url, tmp_path)
    c.track("e")
    assert c.flush(timeout=10)
    c.close()
    assert c.stats.rejected == 1
    assert "invalid_body" in (c.stats.last_error or "")


def test_a_full_queue_drops_new_events_with_a_count_and_a_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = client(closed_port_url(), tmp_path, max_queue_events=5, flush_interval=60)
    for i in range(8):
        c.track("e", {"i": i})
    assert c.pending() == 5
    assert c.stats.dropped_queue_full == 3
    assert "offline queue full" in caplog.text
    c.close(timeout=0)


def test_drop_oldest_keeps_the_newest_events(ingest: FakeIngest, tmp_path: Path) -> None:
    c = client(closed_port_url(), tmp_path, max_queue_events=3, on_full=DROP_OLDEST, flush_interval=60)
    ids = [c.track("e", {"i": i}) for i in range(5)]
    c.close(timeout=0)
    up = client(ingest.url, tmp_path)
    assert up.flush(timeout=10)
    up.close()
    assert ingest.accepted_ids() == ids[2:]


def test_many_threads_tracking_at_once_lose_nothing_and_share_no_id(
    ingest: FakeIngest, tmp_path: Path
) -> None:
    c = client(ingest.url, tmp_path)
    ids: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [c.track("e") for _ in range(200)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.flush(timeout=20)
    c.close()
    assert sorted(ingest.accepted_ids()) == sorted(ids)
    assert len(set(ids)) == 1600


def test_two_clients_on_one_directory_take_separate_slots(ingest: FakeIngest, tmp_path: Path) -> None:
    a, b = client(ingest.url, tmp_path), client(ingest.url, tmp_path)
    assert a.queue_dir != b.queue_dir
    a.close()
    b.close()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("",), {}),
        (("$identify",), {}),
        (("e", {"nested": {"a": 1}}), {}),
        (("e", {"x": float("nan")}), {}),
        (("e", {"big": 2**64}), {}),
        (("e", {"$p": 1}), {}),
        (("e", {"s": "x" * 40_000}), {}),
    ],
)
def test_events_ingest_would_refuse_raise_at_the_call(
    tmp_path: Path, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    c = client(closed_port_url(), tmp_path, flush_interval=60)
    with pytest.raises((ValueError, TypeError)):
        c.track(*args, **kwargs)
    assert c.pending() == 0
    c.close(timeout=0)


def test_uuid7_ids_are_version_7_and_increase() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert ids == sorted(ids, key=lambda u: u.int)
    assert len(set(ids)) == 5000


def test_consent_is_sent_per_event_or_for_every_later_event(ingest: FakeIngest, tmp_path: Path) -> None:
    c = client(ingest.url, tmp_path)
    c.track("not_stated")
    c.track("refused_once", consent={"analytics": False})
    c.set_consent({"analytics": True, "marketing": False})
    c.track("after_banner")
    c.identify("user-1")
    c.set_consent(None)
    c.track("cleared")
    with pytest.raises(ValueError):
        c.track("bad", consent={"Analytics": True})
    with pytest.raises(TypeError):
        c.track("bad", consent={"analytics": "yes"})  # type: ignore[dict-item]
    assert c.flush(timeout=10)
    c.close()
    sent = {e.get("name", "$identify"): e.get("consent") for r in ingest.requests for e in r.events}
    assert sent == {
        "not_stated": None,
        "refused_once": {"analytics": False},
        "after_banner": {"analytics": True, "marketing": False},
        "$identify": {"analytics": True, "marketing": False},
        "cleared": None,
    }
