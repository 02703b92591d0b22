"""The holder's answers on the index's socket (store/serve.py): vectors as
raw bytes where the asker reads them, base64 for a process of an earlier
version, both ways."""

import base64
import json
import socket
import struct
import threading

import numpy as np
import pytest

from fiftyone_ai_search.store import serve as sv

pytestmark = pytest.mark.skipif(not sv.SUPPORTED,
                                reason="abstract Unix sockets: Linux only")


def _matrices():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((300, 16)).astype(np.float32),
            rng.standard_normal((2, 5)).astype(np.float32))


@pytest.fixture
def holder(tmp_path):
    first, second = _matrices()
    server = sv.Server(str(tmp_path), lambda request: {
        "op": request["op"], "ids": ["a", "b"],
        "vectors": sv.pack(first), "more": [sv.pack(second), None]})
    assert server.listening
    yield str(tmp_path), first, second
    server.stop()
    server.join(5)


def _raw_request(dirpath, request):
    """What a process of an earlier version sends and reads (4-byte length,
    JSON): the answer's header and its JSON."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(sv.address(dirpath))
    body = json.dumps(request).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)
    (size,) = struct.unpack(">I", sv._recv_exactly(sock, 4))
    answer = sv._recv_exactly(sock, size)
    sock.close()
    return size, json.loads(answer)


def test_vectors_reach_the_asker_as_the_holders_float32_rows(holder):
    dirpath, first, second = holder
    answer = sv.ask(dirpath, {"op": "points_in"}, timeout=10)
    assert answer["op"] == "points_in" and answer["ids"] == ["a", "b"]
    got = sv.unpack(answer["vectors"])
    assert got.dtype == np.float32 and got.shape == first.shape
    np.testing.assert_array_equal(got, first)
    np.testing.assert_array_equal(sv.unpack(answer["more"][0]), second)
    assert answer["more"][1] is None


def test_the_vectors_travel_as_raw_bytes_beside_small_json(holder):
    dirpath, first, second = holder
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(sv.address(dirpath))
    body = json.dumps({"op": "points_in", "blobs": True}).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)
    size, nbytes = struct.unpack(">II", sv._recv_exactly(sock, 8))
    sock.close()
    assert size & (1 << 31)
    assert nbytes == first.nbytes + second.nbytes
    assert size & ~(1 << 31) < 300  # ids and shapes, no base64


def test_an_asker_of_an_earlier_version_gets_base64_it_can_read(holder):
    dirpath, first, _ = holder
    size, answer = _raw_request(dirpath, {"op": "points_in"})
    assert not size & (1 << 31)  # no raw bytes follow: it would not read them
    packed = answer["ok"]["vectors"]
    # as that version decoded it
    rows = np.frombuffer(base64.b64decode(packed["b64"]), "<f4").reshape(
        packed["shape"])
    np.testing.assert_array_equal(rows, first)


def test_a_holder_of_an_earlier_version_is_read_too(tmp_path):
    first, _ = _matrices()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sv.address(str(tmp_path)))
    listener.listen(1)
    requests = []

    def old_holder():
        conn, _ = listener.accept()
        with conn:
            (size,) = struct.unpack(">I", sv._recv_exactly(conn, 4))
            requests.append(json.loads(sv._recv_exactly(conn, size)))
            body = json.dumps({"ok": {"vectors": {
                "shape": list(first.shape),
                "b64": base64.b64encode(first.tobytes()).decode()}}}).encode()
            conn.sendall(struct.pack(">I", len(body)) + body)

    thread = threading.Thread(target=old_holder)
    thread.start()
    try:
        answer = sv.ask(str(tmp_path), {"op": "points_in"}, timeout=10)
    finally:
        thread.join(10)
        listener.close()
    assert requests[0]["op"] == "points_in"
    np.testing.assert_array_equal(sv.unpack(answer["vectors"]), first)


def test_an_answer_naming_bytes_it_did_not_send_is_not_taken(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sv.address(str(tmp_path)))
    listener.listen(1)

    def lying_holder():
        conn, _ = listener.accept()
        with conn:
            (size,) = struct.unpack(">I", sv._recv_exactly(conn, 4))
            sv._recv_exactly(conn, size)
            body = json.dumps({"ok": {"vectors": {
                "shape": [100, 16], "offset": 0}}}).encode()
            conn.sendall(struct.pack(">II", len(body) | 1 << 31, 64)
                         + body + bytes(64))

    thread = threading.Thread(target=lying_holder)
    thread.start()
    try:
        # the asker then does the work itself
        with pytest.raises(sv.NotServed):
            sv.ask(str(tmp_path), {"op": "points_in"}, timeout=10)
    finally:
        thread.join(10)
        listener.close()


def test_a_matrix_answered_within_the_process_is_the_same_rows():
    first, _ = _matrices()
    np.testing.assert_array_equal(sv.unpack(sv.pack(first)), first)
    # an answer that is not JSON-able fails as the handler's error would
    with pytest.raises(TypeError):
        sv._encode({"ok": object()}, [])
