"""Locust users for bench/load.py: each posts images of mixed sizes to /v1/segment.

Read from the environment (bench/load.py sets them):
    SCENEPARSE_BENCH_IMAGES   a folder of PNG files; each user picks one at random per request
    SCENEPARSE_BENCH_API_KEY  sent as X-API-Key when set
    SCENEPARSE_BENCH_OUT      where to write every answer as JSON lines (status, seconds, image size)

A request is a success only with 200. Others are recorded as failures named by their status and
error code (`503 queue_full`, `413 request_too_costly`, ...), so Locust's failure table counts them;
a 503 user waits about its Retry-After before the next request, as a well-behaved client does.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from locust import HttpUser, between, events, task

IMAGES = sorted(Path(os.environ.get("SCENEPARSE_BENCH_IMAGES", ".")).glob("*.png"))
BODIES = [(path.stem, path.read_bytes()) for path in IMAGES]
KEY = os.environ.get("SCENEPARSE_BENCH_API_KEY")
ANSWERS: list[dict] = []  # Locust's percentiles mix fast refusals with real work: keep each answer


@events.quitting.add_listener
def _write_answers(environment, **kwargs) -> None:
    out = os.environ.get("SCENEPARSE_BENCH_OUT")
    if out:
        Path(out).write_text("".join(json.dumps(answer) + "\n" for answer in ANSWERS))


class SegmentUser(HttpUser):
    wait_time = between(0.0, 0.2)

    @task
    def segment(self) -> None:
        if not BODIES:
            raise RuntimeError("SCENEPARSE_BENCH_IMAGES holds no PNG")
        size, body = random.choice(BODIES)
        headers = {"X-API-Key": KEY} if KEY else {}
        started = time.perf_counter()
        with self.client.post("/v1/segment", params={"output": "label"}, data=body, headers=headers,
                              name="/v1/segment", catch_response=True, timeout=120) as response:
            ANSWERS.append({"status": response.status_code, "seconds": time.perf_counter() - started,
                            "size": size})
            if response.status_code == 200:
                response.success()
                return
            try:
                code = response.json().get("error", "")
            except ValueError:
                code = ""
            response.failure(f"{response.status_code} {code}".strip())
            if response.status_code == 503:
                self.wait_retry_after(response)

    def wait_retry_after(self, response) -> None:
        try:
            seconds = float(response.headers.get("Retry-After", 1))
        except ValueError:
            seconds = 1.0
        self._sleep(seconds * random.uniform(0.3, 1.0))

    def _sleep(self, seconds: float) -> None:
        import gevent

        gevent.sleep(seconds)
