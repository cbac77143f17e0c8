"""The Triton backend's HTTP clients are per thread: a new thread never gets an ended thread's client.

No server is needed: tritonclient's HTTP client connects on first use. (Found by the queue test in
test_triton_versions.py: thread ids are reused, and an ended thread's geventhttpclient client fails
with "cannot switch to a different thread".)
"""

from __future__ import annotations

import threading

from serving.backends.triton import _ClientPool


def test_a_reused_thread_id_gets_a_fresh_http_client():
    pool = _ClientPool("127.0.0.1:1", "http", connect_timeout_s=1.0)
    seen: list[tuple[int, object]] = []

    def take() -> None:
        client, _ = pool.get(5.0)
        assert pool.get(5.0)[0] is client  # the same thread keeps its client
        seen.append((threading.get_ident(), client))

    try:
        for _ in range(20):
            thread = threading.Thread(target=take)
            thread.start()
            thread.join()
        idents = [ident for ident, _ in seen]
        assert len(set(idents)) < len(idents), "no thread id was reused; the test proves nothing"
        clients = [client for _, client in seen]
        assert len({id(c) for c in clients}) == len(clients)  # never handed on to another thread
    finally:
        pool.close_all()
