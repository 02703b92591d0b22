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
(:func:`pack`), never as JSON numbers: 10k 512-d vectors as JSON lists took
the holder 35 s to answer under load, its writer waiting meanwhile
(measured at 100k points, load average 19). An asker that says so
(``"blobs": true`` in its request, as :func:`ask` does) gets them as their
raw float32 bytes after the JSON: the answer's length then has its top bit
set and is followed by a second 4-byte length, the bytes' (the JSON names
each matrix by its ``shape`` and ``offset`` in them). Otherwise (an asker of
an earlier version) they come in base64 inside the JSON, which cost the
holder ~160 ms of a core for a diverse search's 10k 512-d vectors (the
asker ~100 ms more), against none for the raw bytes sent as they lie in
memory. Both ends read both forms, so processes of two versions on one
index still answer each other.
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

#: the top bit of an answer's length: raw bytes follow it (a message is
#: never that long, see MAX_MESSAGE)
_WITH_BLOBS = 1 << 31


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


class Packed:
    """A float32 matrix in an answer (see :func:`pack`)."""

    __slots__ = ("matrix",)

    def __init__(self, matrix):
        self.matrix = np.ascontiguousarray(matrix, dtype="<f4")


def pack(matrix):
    """A float32 matrix for an answer: sent as its raw bytes where the
    asker reads them, else in base64 (see the module's docstring); the
    asker gets it back with :func:`unpack`."""
    return Packed(matrix)


def unpack(packed):
    """The float32 matrix of :func:`pack`, as it came: an array already
    (raw bytes), base64 in a dict (a holder of an earlier version), or the
    :class:`Packed` itself (an answer within this process).

    Raises:
        ValueError: if it is neither
    """
    if isinstance(packed, np.ndarray):
        return packed
    if isinstance(packed, Packed):  # answered within this process
        return packed.matrix
    data = base64.b64decode(packed["b64"], validate=True)
    return np.frombuffer(data, dtype="<f4").reshape(packed["shape"])


def _encode(data, blobs=None):
    """A message's body: ``data`` as compact JSON (ValueError or TypeError
    where it is not JSON-able). Its :class:`Packed` matrices go in base64,
    or, given a list ``blobs``, are appended to it and named by their
    offset in the bytes sent after the body (see :func:`_send`)."""
    offset = 0

    def packed(obj):
        nonlocal offset
        if not isinstance(obj, Packed):
            raise TypeError(f"{type(obj).__name__} is not JSON-able")
        shape = list(obj.matrix.shape)
        if blobs is None:
            return {"shape": shape, "b64": base64.b64encode(
                obj.matrix.tobytes()).decode("ascii")}
        blobs.append(obj.matrix)
        ref = {"shape": shape, "offset": offset}
        offset += obj.matrix.nbytes
        return ref

    return json.dumps(data, separators=(",", ":"), default=packed).encode()


def _send(sock, body, blobs=()):
    """Sends a message's ``body`` (see :func:`_encode`), then the raw bytes
    of its ``blobs`` if any."""
    # header, body and blobs written apart, not joined: that would copy the
    # body and the matrices (~20 MB for a diverse search's 10k vectors)
    if blobs:
        size = sum(b.nbytes for b in blobs)
        sock.sendall(_HEADER.pack(len(body) | _WITH_BLOBS)
                     + _HEADER.pack(size))
    else:
        sock.sendall(_HEADER.pack(len(body)))
    sock.sendall(body)
    for blob in blobs:
        sock.sendall(memoryview(blob).cast("B"))


def _recv_into(sock, buffer):
    view, got = memoryview(buffer), 0
    while got < len(view):
        n = sock.recv_into(view[got:], min(len(view) - got, 1 << 20))
        if not n:
            raise ConnectionError("connection closed")
        got += n
    return buffer


def _recv_exactly(sock, size):
    # the buffer itself: json and struct read it as it is (a copy to bytes
    # would cost an old holder's 27 MB base64 answer once more)
    return _recv_into(sock, bytearray(size))


def _recv(sock):
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    nbytes = None
    if size & _WITH_BLOBS:
        size &= ~_WITH_BLOBS
        (nbytes,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    if size > MAX_MESSAGE or (nbytes or 0) > MAX_MESSAGE:
        raise ConnectionError(f"message of {size} + {nbytes} bytes")
    body = _recv_exactly(sock, size)
    if nbytes is None:
        return json.loads(body)
    blobs = _recv_into(sock, bytearray(nbytes))

    def matrix(obj):
        # a matrix named in the JSON: a view of the bytes after it
        if obj.keys() == {"shape", "offset"}:
            shape = [int(n) for n in obj["shape"]]
            count = int(np.prod(shape))
            offset = int(obj["offset"])
            if offset < 0 or offset + 4 * count > nbytes:
                raise ValueError("a matrix beyond the bytes sent")
            return np.frombuffer(blobs, dtype="<f4", count=count,
                                 offset=offset).reshape(shape)
        return obj

    return json.loads(body, object_hook=matrix)


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
            # raw bytes for the answer's matrices (see the module's doc)
            _send(sock, _encode(dict(request, blobs=True)))
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
                    # raw bytes where the asker reads them (not one of an
                    # earlier version)
                    blobs = ([] if isinstance(request, dict)
                             and request.get("blobs") is True else None)
                    try:
                        # encoded once, here: an answer that is not
                        # JSON-able fails as the handler's error would
                        body = _encode({"ok": self._handler(request)}, blobs)
                        self.served += 1
                    except NotServed as e:
                        blobs = None
                        body = _encode({"error": str(e), "retry": e.retry})
                    except Exception as e:  # the asker does it, and raises
                        blobs = None
                        body = _encode(
                            {"error": f"{type(e).__name__}: {e}"})
                    conn.settimeout(None)
                    _send(conn, body, blobs or ())
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
