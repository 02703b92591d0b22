"""Secrets in the Qdrant URL never shown, and an unreachable Qdrant server
refused at enable, before anything is written."""

import contextlib
import http.server
import json
import logging
import socket
import struct
import threading
import traceback

import fiftyone.core.odm as foo
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.sync import runner
from fiftyone_ai_search.index import state as st
from fiftyone_ai_search.config import get_settings, redact_url
from fiftyone_ai_search.demo import tiny_clip_model_name
from fiftyone_ai_search.errors import AISearchError
from fiftyone_ai_search.store.server import (
    QdrantUnreachableError,
    ServerStore,
    check_server,
)

from tests.helpers import shapes_dataset

PASSWORD = "pw-marker-7f3a9c"
TOKEN = "token-marker-51d2e0"
API_KEY = "key-marker-c0ffee"
MARKERS = (PASSWORD, TOKEN, API_KEY)

# the stub servers speak plain HTTP; qdrant-client rightly warns about a key
pytestmark = pytest.mark.filterwarnings(
    "ignore:Api key is used with an insecure connection"
)


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _stub_server(status):
    """A local HTTP server answering every request with ``status`` (and a
    Qdrant-like empty collection list for 200)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if status == 200:
                body = {"result": {"collections": []}, "status": "ok",
                        "time": 0.0}
            else:
                body = {"status": {"error": "Must provide an API key"}}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def _secret_url(port):
    return f"http://admin:{PASSWORD}@127.0.0.1:{port}/?token={TOKEN}"


def _assert_no_marker(*texts):
    for text in texts:
        for marker in MARKERS:
            assert marker not in text, (marker, text)


def _assert_nothing_stored():
    db = foo.get_db_conn()
    docs = [json.dumps(doc, default=str) for doc in st._states().find()]
    for name in db.list_collection_names():
        docs.extend(json.dumps(d, default=str) for d in db[name].find())
    _assert_no_marker(*docs)


@pytest.fixture
def no_worker(monkeypatch):
    started = []
    monkeypatch.setattr(
        runner, "start_background", lambda *a, **k: started.append(a)
    )
    return started


# --- redaction -------------------------------------------------------------


@pytest.mark.parametrize(
    "url,shown",
    [
        ("https://user:pw@qdrant.example.com:6333",
         "https://***@qdrant.example.com:6333"),
        # every query parameter's value, whatever its name (a list of
        # names misses x-api-key=, auth=, and whatever a proxy invents)
        ("https://qdrant.example.com:6333/qdrant?api_key=pw&timeout=5",
         "https://qdrant.example.com:6333/qdrant?api_key=***&timeout=***"),
        ("https://h?Key=pw&Token=pw&apikey=pw&access_token=pw&keys=1",
         "https://h?Key=***&Token=***&apikey=***&access_token=***&keys=***"),
        ("https://h:6333/?x-api-key=pw&auth=pw&flag&empty=",
         "https://h:6333/?x-api-key=***&auth=***&flag&empty="),
        ("https://h/?a=1=2;b=c#frag", "https://h/?a=***#***"),
        # a password holding '/', '?', '#' or '@' leaks no part of it
        ("https://u:p/w?x#y@z@host:6333/p", "https://***@host:6333/p"),
        ("u:pw@host:6333", "***@host:6333"),
        ("http://localhost:6333", "http://localhost:6333"),
        (":memory:", ":memory:"),
        (None, None),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_settings_repr_shows_no_secret(monkeypatch):
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_URL", _secret_url(6333))
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_API_KEY", API_KEY)
    settings = get_settings()
    assert settings.qdrant_url == _secret_url(6333)  # the real one, to use
    assert settings.qdrant_api_key == API_KEY

    _assert_no_marker(repr(settings), str(settings), f"{settings}")
    shown = "qdrant_url='http://***@127.0.0.1:6333/?token=***'"
    assert shown in repr(settings)

    # also from plugin secrets
    from_secrets = get_settings(secrets={
        "FIFTYONE_AI_SEARCH_QDRANT_URL": _secret_url(1),
        "FIFTYONE_AI_SEARCH_QDRANT_API_KEY": API_KEY,
    })
    _assert_no_marker(repr(from_secrets))


def _other_params_url(port):
    # query parameters no list of secret names would know
    return (f"http://127.0.0.1:{port}/?x-api-key={TOKEN}&auth={PASSWORD}"
            f"&X-Custom={API_KEY}")


def test_any_query_parameter_of_the_url_is_kept_out_of_sight(monkeypatch):
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_URL", _other_params_url(1))
    settings = get_settings()
    assert settings.qdrant_url == _other_params_url(1)  # the real one, to use
    _assert_no_marker(repr(settings), str(settings))
    assert ("qdrant_url='http://127.0.0.1:1/?x-api-key=***&auth=***"
            "&X-Custom=***'") in repr(settings)

    port = _closed_port()
    with pytest.raises(QdrantUnreachableError) as info:
        check_server(_other_params_url(port))
    error = info.value
    assert f"http://127.0.0.1:{port}/?x-api-key=***" in str(error)
    _assert_no_marker(str(error), repr(error),
                      "".join(traceback.format_exception(error)))

    with _stub_server(403) as port:  # a refusal, as the server words it
        with pytest.raises(QdrantUnreachableError) as info:
            check_server(_other_params_url(port))
        _assert_no_marker(str(info.value))


def test_server_store_repr_and_errors_show_no_secret():
    from qdrant_client import QdrantClient

    url = _secret_url(6333)
    store = ServerStore("secrets", url=url, client=QdrantClient(":memory:"))
    assert "http://***@127.0.0.1:6333" in repr(store)
    _assert_no_marker(repr(store))

    with pytest.raises(Exception) as info:
        store.count()  # no such collection
    _assert_no_marker(str(info.value), "".join(
        traceback.format_exception(info.value)))


# --- reachability -----------------------------------------------------------


def test_memory_is_always_reachable():
    check_server(":memory:")
    check_server(":memory:", api_key=API_KEY)


def test_a_qdrant_server_that_answers_is_reachable():
    with _stub_server(200) as port:
        check_server(f"http://127.0.0.1:{port}")
        check_server(_secret_url(port), api_key=API_KEY)


@contextlib.contextmanager
def _dropping_server():
    """A local port that accepts each connection and drops it at once (a
    reset): yields ``(port, connections)``, the list of those accepted."""
    connections = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)

        def drop():
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:  # closed: the test is over
                    return
                connections.append(conn)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack("ii", 1, 0))
                conn.close()

        thread = threading.Thread(target=drop, daemon=True)
        thread.start()
        yield sock.getsockname()[1], connections
        sock.shutdown(socket.SHUT_RDWR)
    thread.join(10)


def test_unreachable_server_names_the_url_without_secrets():
    port = _closed_port()
    with pytest.raises(QdrantUnreachableError) as info:
        check_server(_secret_url(port), api_key=API_KEY)
    # at once: a connection that fails is never tried again (counted where
    # a port can count: one that accepts and drops each connection)
    with _dropping_server() as (dropping, connections):
        # the drop reads as a reset, a disconnect or a broken pipe, as the
        # reset reached the client before, while or after it wrote (CI saw
        # the first two)
        with pytest.raises(QdrantUnreachableError,
                           match="reset|disconnected|[Bb]roken pipe"):
            check_server(f"http://127.0.0.1:{dropping}", timeout=60)
    assert len(connections) == 1

    error = info.value
    assert isinstance(error, ConnectionError)
    assert isinstance(error, AISearchError)
    message = str(error)
    assert f"http://***@127.0.0.1:{port}/?token=***" in message
    assert "Connection refused" in message
    for advice in ("Start the server", "FIFTYONE_AI_SEARCH_QDRANT_URL",
                   "FIFTYONE_AI_SEARCH_QDRANT_API_KEY", "backend='edge'"):
        assert advice in message
    _assert_no_marker(message, repr(error),
                      "".join(traceback.format_exception(error)))


def test_a_server_that_never_answers_times_out():
    with socket.socket() as sock:  # listens, never accepts
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(QdrantUnreachableError,
                           match="no answer within 1 s"):
            check_server(url, timeout=1)
        # it asked once, then gave up and hung up (the request is followed
        # by the end of its connection), and asked no more
        conn, _ = sock.accept()
        with conn:
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        assert received.startswith(b"GET /collections ")
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.accept()


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_api_key_says_so(status):
    with _stub_server(status) as port:
        with pytest.raises(QdrantUnreachableError) as info:
            check_server(_secret_url(port), api_key=API_KEY)
        message = str(info.value)
        assert "refused the API key" in message
        assert f"HTTP {status}" in message
        assert "FIFTYONE_AI_SEARCH_QDRANT_API_KEY" in message
        # qdrant-client sends no user info: say so
        assert "credentials in the URL are not sent" in message
        _assert_no_marker(message, repr(info.value))

        with pytest.raises(QdrantUnreachableError, match="needs an API key"):
            check_server(f"http://127.0.0.1:{port}")


def test_a_server_that_is_not_qdrant():
    with _stub_server(404) as port:
        with pytest.raises(QdrantUnreachableError, match="HTTP 404"):
            check_server(f"http://127.0.0.1:{port}")


# --- at enable: nothing written, nothing leaked ----------------------------


def test_enable_on_an_unreachable_server_writes_nothing(
    tmp_path, monkeypatch, caplog, no_worker
):
    caplog.set_level(logging.DEBUG)
    port = _closed_port()
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_URL", _secret_url(port))
    monkeypatch.setenv("FIFTYONE_AI_SEARCH_QDRANT_API_KEY", API_KEY)
    dataset = shapes_dataset(tmp_path, num_samples=3, enable=False)

    with pytest.raises(QdrantUnreachableError) as info:
        ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                              backend="server")
    assert f"127.0.0.1:{port}" in str(info.value)

    assert not ais.is_embeddings_enabled(dataset)
    assert st.get(dataset) is None
    assert no_worker == []
    _assert_no_marker(
        str(info.value), repr(info.value),
        "".join(traceback.format_exception(info.value)), caplog.text,
        *(str(r.args) for r in caplog.records),
    )
    _assert_nothing_stored()


def test_enable_with_a_refused_api_key_writes_nothing(
    tmp_path, monkeypatch, caplog, no_worker
):
    caplog.set_level(logging.DEBUG)
    dataset = shapes_dataset(tmp_path, num_samples=3, enable=False)
    with _stub_server(401) as port:
        secrets = {
            "FIFTYONE_AI_SEARCH_QDRANT_URL": _secret_url(port),
            "FIFTYONE_AI_SEARCH_QDRANT_API_KEY": API_KEY,
        }
        with pytest.raises(QdrantUnreachableError,
                           match="refused the API key") as info:
            ais.enable_embeddings(dataset, model=tiny_clip_model_name(),
                                  backend="server", secrets=secrets)

    assert not ais.is_embeddings_enabled(dataset)
    assert st.get(dataset) is None
    assert no_worker == []
    _assert_no_marker(str(info.value), caplog.text)
    _assert_nothing_stored()
