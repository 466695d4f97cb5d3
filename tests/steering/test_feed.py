import json

import pytest
import zmq
import zmq.auth

from steering.feed import DecisionPublisher, subscribe
from steering.protocol import Decision, DecisionFormatError, decode, encode


def test_decision_round_trip_and_validation():
    d = Decision(kind="rescan_region", scan=3, reason="x", positions_px=[[1, 2]], region_px=[0, 0, 10, 10],
                 metrics={"coverage": 0.5}, model_version=4, seq=7)
    back = decode(encode(d))
    assert back.kind == "rescan_region" and back.positions_px == [[1, 2]] and back.time > 0 and back.seq == 7
    with pytest.raises(DecisionFormatError, match="unknown decision kind"):
        Decision(kind="explode", scan=1, reason="")
    with pytest.raises(DecisionFormatError, match="positions_px"):
        Decision(kind="rescan_region", scan=1, reason="")
    with pytest.raises(DecisionFormatError, match="exposure_factor"):
        Decision(kind="adjust_exposure", scan=1, reason="", exposure_factor=0)
    for parts in ([b"steer.continue", b"{oops"], [b"other", b"{}"], [b"steer.x", b'{"schema": 9}'],
                  [b"steer.continue", json.dumps({"schema": 1, "kind": "continue", "scan": 1, "reason": "",
                                                  "bogus": 1}).encode()]):
        with pytest.raises(DecisionFormatError):
            decode(parts)


def _receive(pub, sub, n=1):
    got = []
    for _ in range(200):  # condition loop: service subscriptions until the greeting arrives
        pub.service()
        if sub.poll(20):
            got.append(decode(sub.recv_multipart()))
            if len(got) == n:
                return got
    return got


def test_a_late_subscriber_gets_the_latest_state_at_once(ctx):
    pub = DecisionPublisher("tcp://127.0.0.1:*", context=ctx)
    pub.publish(Decision(kind="adjust_exposure", scan=1, reason="old scan", exposure_factor=0.5))
    pub.publish(Decision(kind="continue", scan=2, reason="a"))
    pub.publish(Decision(kind="continue", scan=2, reason="b"))  # replaces "a" in the cache
    pub.publish(Decision(kind="adjust_exposure", scan=2, reason="saturating", exposure_factor=0.5))
    pub.publish(Decision(kind="continue", scan=1, reason="a late heartbeat of the old scan"))  # must not evict
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"steer.")
    sub.connect(pub.endpoint)
    got = _receive(pub, sub, 2)
    assert sorted((d.kind, d.reason, d.scan) for d in got) == [("adjust_exposure", "saturating", 2), ("continue", "b", 2)]
    sub.close(linger=0)
    pub.close()


def test_a_subscriber_that_never_reads_does_not_block_the_publisher(ctx):
    pub = DecisionPublisher("tcp://127.0.0.1:*", context=ctx, hwm=10)
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(pub.endpoint)
    assert _receive(pub, stalled, 0) == []  # let the subscription arrive
    for i in range(20_000):
        pub.publish(Decision(kind="continue", scan=1, reason=f"{i}", metrics={"x": float(i)}))
    assert pub.published == 20_000
    stalled.close(linger=0)
    pub.close()


def test_curve_lets_only_authorised_clients_read_the_feed(ctx, tmp_path):
    keys = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    keys.mkdir()
    server_pub, server_secret = zmq.auth.create_certificates(keys, "server")
    client_pub, client_secret = zmq.auth.create_certificates(allowed, "client")
    _, stranger_secret = zmq.auth.create_certificates(keys, "stranger")
    pub = DecisionPublisher("tcp://127.0.0.1:*", context=ctx, curve_secret=tmp_path / server_secret,
                            authorized_keys=allowed)
    pub.publish(Decision(kind="continue", scan=1, reason="hello"))

    def client(secret):
        sock = ctx.socket(zmq.SUB)
        sock.curve_serverkey = zmq.auth.load_certificate(str(tmp_path / server_pub))[0]
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(str(secret))
        sock.setsockopt(zmq.SUBSCRIBE, b"steer.")
        sock.connect(pub.endpoint)
        return sock

    good, bad = client(tmp_path / client_secret), client(tmp_path / stranger_secret)
    assert [d.reason for d in _receive(pub, good)] == ["hello"]
    assert _receive(pub, bad) == []  # never authenticated: nothing arrives within the greeting window
    good.close(linger=0)
    bad.close(linger=0)
    pub.close()


def test_subscribe_helper_skips_malformed_messages(ctx):
    raw = ctx.socket(zmq.PUB)
    raw.bind("tcp://127.0.0.1:*")
    feed = subscribe(raw.getsockopt_string(zmq.LAST_ENDPOINT), context=ctx, timeout_ms=20)
    assert next(feed) is None  # connected, nothing yet
    good = encode(Decision(kind="stop_scan", scan=1, reason="done"))
    for _ in range(200):
        raw.send_multipart([b"steer.garbage", b"{no"])
        raw.send_multipart(good)
        item = next(feed)
        if item is not None:
            break
    assert item.kind == "stop_scan"
    feed.close()
    raw.close(linger=0)
