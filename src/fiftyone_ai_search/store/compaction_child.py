"""The child's side of a compaction beside the holder (see
:mod:`~fiftyone_ai_search.store.compaction`): run as ``python -m
fiftyone_ai_search.store.compaction_child <shard copy> <holder's pid>``,
it optimizes the copy, says so on its standard output, and, if the holder
asks (``serve <address>``), answers the index's requests on the compacted
copy at the holder's address (a *relay*) until the holder says ``stop``.

Its own module so that the holder's side imports nothing of the store's
(``edge`` imports ``compaction``), while the child answers with the
package's own answering code (``EdgeStore._answer``, ``serve.Server``).
"""

import sys
import time

import qdrant_edge as qe

from . import children
from . import compaction as cp
from . import priority
from . import serve
from .edge import EdgeStore, _compaction_config, _optimize_reads


def _tell_parent(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def relay(shard, dirpath):
    """In the child: answers the index's requests on its compacted copy,
    on the holder's address, until the holder says ``stop`` (or goes).

    Returns:
        the requests answered
    """
    def answer(request):
        return {"result": EdgeStore._answer(shard, request), "turns": 0}

    # the holder's server let the address go as this starts: a few tries
    for _ in range(cp.RELAY_BIND_TRIES):
        server = serve.Server(dirpath, answer, name="ai-search-relay")
        if server.listening:
            break
        time.sleep(0.01)
    _tell_parent("serving" if server.listening else "not serving")
    sys.stdin.readline()  # "stop", or '' where the holder went
    server.stop()
    server.join()  # a request under way is answered before the closing
    return server.served


def _optimize(shard, path):
    with _optimize_reads(shard, path):
        shard.optimize()
    shard.flush()


def main(argv):
    """The child: optimizes the shard copy at ``argv[0]``, says so, and
    keeps it open for a relay (:func:`relay`) if the holder asks."""
    path, parent_pid = argv[0], int(argv[1])
    children.die_with_parent(parent_pid)
    # the opening (a replay of the copied log) and the optimize at a low
    # priority, the relay (searches) at the process's own
    # (its codes, where it has none yet, come with the optimize)
    shard = priority.run_niced(qe.EdgeShard.load, path,
                               _compaction_config(path))
    try:
        try:
            priority.run_niced(_optimize, shard, path)
        except Exception as e:
            sys.stderr.write(f"{type(e).__name__}: {e}\n")
            full = "not enough space" in str(e).lower()
            return cp.NO_SPACE_EXIT if full else 2
        _tell_parent("optimized")
        said = sys.stdin.readline().split(maxsplit=1)
        if said[:1] == ["serve"] and len(said) == 2:
            served = relay(shard, said[1].strip())
            _tell_parent(f"stopped {served}")
    finally:
        shard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
