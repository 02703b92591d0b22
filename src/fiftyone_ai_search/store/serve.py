"""The process that holds an embedded index answers the others' searches.

A Qdrant Edge shard can be open in one process at a time, and opening a
large one is not free (1.2-1.3 s of CPU at 1M 512-d points, several seconds
of wall time on a busy machine; see :mod:`fiftyone_ai_search.store.edge`,
measured in ``bench/bench_concurrent.py``). So the process that has the shard open (the
*holder*: a worker syncing, the App searching) listens on a local socket
while it holds it, and another process's search is sent there instead of
taking the index away from it: the search waits for at most what the holder
is doing at that moment (one chunk of a write, one page read or one cell's
write of an upkeep round, see :mod:`fiftyone_ai_search.store.edge`), never
for a closing and an opening. A compaction runs in a child process on a
copy of the shard while the holder answers, and the child answers on the
holder's address while the holder reopens the compacted shard (see
:mod:`~fiftyone_ai_search.store.compaction`).

- The socket is a Linux *abstract* Unix socket named after the index
  directory: it has no file, so nothing is left behind, and it disappears
  with its process. A holder killed with ``kill -9`` loses its socket and
  its ``flock`` at once: the next search finds nobody to ask and takes the
  index itself. A holder that is alive but does not answer holds a search
  up for ``lock_timeout`` at most, as its lock would.
- Only requests from the same user are answered (``SO_PEERCRED``), and a
  request is JSON data, never code.
- Elsewhere than Linux nothing listens, and processes take turns on the
  index as before.

The protocol: one request per connection, each way a 4-byte big-endian
length and a JSON object; a request is ``{"op": ..., ...}``, the answer
``{"ok": result}``, or ``{"error": message}`` (the asker then does the work
itself, which raises the right error). Vectors travel packed
(:func:`pack`: their float32 bytes in base64) rather than as JSON numbers:
10k 512-d vectors as JSON lists took the holder 35 s to answer under load,
its writer waiting meanwhile (measured at 100k points, load average 19).
"""

import base64
import hashlib
import json
import logging
import os
import socket
import struct
import sys
import threading
import weakref

import numpy as np

logger = logging.getLogger(__name__)

#: whether this platform has abstract Unix sockets
SUPPORTED = sys.platform.startswith("linux")

#: the most bytes of one message (a request carries a vector and maybe a
#: list of ids; an answer at most ``limit`` scored ids)
MAX_MESSAGE = 256 * 2**20

_HEADER = struct.Struct(">I")


class NotServed(Exception):
    """Nobody answered: no holder listens, it stopped holding, or it failed
    (the asker does the work itself).

    ``retry``: whether asking again may be answered (nobody listened, or the
    holder went away), rather than the holder answering with an error.
    """

    def __init__(self, message, retry=False):
        super().__init__(message)
        self.retry = retry


def address(dirpath):
    """The abstract socket address of the index in ``dirpath``."""
    real = os.path.realpath(dirpath).encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(real).hexdigest()[:40]
    return f"\0fiftyone-ai-search-{digest}"


def pack(matrix):
    """A float32 matrix as a JSON-able dict (see :func:`unpack`)."""
    matrix = np.ascontiguousarray(matrix, dtype="<f4")
    return {"shape": list(matrix.shape),
            "b64": base64.b64encode(matrix.tobytes()).decode("ascii")}


def unpack(packed):
    """The float32 matrix of :func:`pack`'s dict.

    Raises:
        ValueError: if it is not one
    """
    data = base64.b64decode(packed["b64"], validate=True)
    return np.frombuffer(data, dtype="<f4").reshape(packed["shape"])


def _encode(data):
    """A message's body: ``data`` as compact JSON (ValueError or TypeError
    where it is not JSON-able)."""
    return json.dumps(data, separators=(",", ":")).encode()


def _send(sock, body):
    """Sends a message's ``body`` (see :func:`_encode`)."""
    # two writes, not one of header + body: that would copy the body
    # (~27 MB for a diverse search's 10k vectors)
    sock.sendall(_HEADER.pack(len(body)))
    sock.sendall(body)


def _recv_exactly(sock, size):
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(sock):
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    if size > MAX_MESSAGE:
        raise ConnectionError(f"message of {size} bytes")
    return json.loads(_recv_exactly(sock, size))


def ask(dirpath, request, timeout):
    """Sends ``request`` to the holder of the index in ``dirpath``.

    Args:
        dirpath: the index directory
        request: a JSON-able dict with an ``op``
        timeout: the most seconds to wait for the answer

    Returns:
        the holder's result

    Raises:
        NotServed: nobody answered (the asker does the work itself)
        TimeoutError: a holder took the request but did not answer in time
    """
    if not SUPPORTED:
        raise NotServed("not on this platform")
    sock = socket.socket(socket.AF_UNIX,
                         socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(address(dirpath))
        except (ConnectionRefusedError, FileNotFoundError):
            raise NotServed("no holder listens", retry=True) from None
        try:
            _send(sock, _encode(request))
            answer = _recv(sock)
        except socket.timeout:
            raise TimeoutError("the holder did not answer") from None
        except (OSError, ValueError) as e:
            # killed meanwhile, or it stopped holding and closed
            raise NotServed(f"the holder went away ({e})",
                            retry=True) from None
    finally:
        sock.close()
    if "ok" not in answer:
        raise NotServed(answer.get("error", "no answer"),
                        retry=answer.get("retry") is True)
    return answer["ok"]


class Server:
    """Answers requests on the index's socket with ``handler(request)`` in
    a daemon thread, until :meth:`stop`.

    ``handler`` returns a JSON-able result, or raises :class:`NotServed`
    (or any exception) to have the asker do the work itself.

    Construction returns a server that does not listen (``listening`` is
    False) if the address is taken: a process that stopped holding the index
    may not have let it go yet, or this platform has no abstract sockets.
    """

    def __init__(self, dirpath, handler, name="ai-search-serve"):
        self._handler = handler
        self._sock = None
        self.served = 0
        if not SUPPORTED:
            return
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(address(dirpath))
            sock.listen(16)
        except OSError as e:
            sock.close()
            logger.debug("not serving %s: %s", dirpath, e)
            return
        self._sock = sock
        _ALL_SERVERS.add(self)
        self._thread = threading.Thread(target=self._run, args=(sock,),
                                        name=name, daemon=True)
        self._thread.start()

    @property
    def listening(self):
        return self._sock is not None

    def stop(self):
        """Stops listening (the address is free when this returns); a
        request being answered is answered."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        sock.close()

    def join(self, timeout=None):
        """After :meth:`stop`: waits for the request under way, if any,
        to be answered."""
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout)

    def _run(self, sock):
        uid = os.getuid()
        while self._sock is sock:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # stopped
            with conn:
                try:
                    creds = conn.getsockopt(socket.SOL_SOCKET,
                                            socket.SO_PEERCRED,
                                            struct.calcsize("3i"))
                    if struct.unpack("3i", creds)[1] != uid:
                        continue
                    conn.settimeout(10.0)
                    request = _recv(conn)
                    try:
                        # encoded once, here: an answer that is not
                        # JSON-able fails as the handler's error would
                        body = _encode({"ok": self._handler(request)})
                        self.served += 1
                    except NotServed as e:
                        body = _encode({"error": str(e), "retry": e.retry})
                    except Exception as e:  # the asker does it, and raises
                        body = _encode(
                            {"error": f"{type(e).__name__}: {e}"})
                    conn.settimeout(None)
                    _send(conn, body)
                except (OSError, ValueError):
                    continue  # the asker went away
                except Exception:  # never the end of the server
                    logger.exception("AI search index server: a request "
                                     "failed")

    def _forget_after_fork(self):
        # a forked child must not keep the address: nobody there answers
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


_ALL_SERVERS = weakref.WeakSet()


def _after_fork_in_child():
    for server in list(_ALL_SERVERS):
        server._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
