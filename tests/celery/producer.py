"""A Python producer for tests/system/celery.rs, as a user of flownexus
would drive devices: each task of the JSON list on stdin is sent to the
`flownexus` queue with `send_task`, its outcome read with
`AsyncResult.get()`; one JSON line per task on stdout: the value, or the
error `get()` raised.

    FNX_BROKER=redis+socket:///tmp/x/redis.sock python producer.py < tasks.json
"""

import json
import os
import sys
import time

from celery import Celery

app = Celery("fnx_test_producer", broker=os.environ["FNX_BROKER"], backend=os.environ["FNX_BROKER"])
app.conf.update(accept_content=["json"], task_serializer="json", result_serializer="json")

tasks = json.load(sys.stdin)
timeout = float(os.environ.get("FNX_TIMEOUT", "30"))
if os.environ.get("FNX_SEQUENTIAL"):
    # One at a time, timed from send_task to get() (`flownexus bench events`).
    for t in tasks:
        start = time.perf_counter()
        value = app.send_task(t["name"], args=t.get("args", []), queue="flownexus").get(timeout=timeout)
        print(json.dumps({"name": t["name"], "ok": True, "seconds": time.perf_counter() - start}), flush=True)
    sys.exit(0)
sent = [
    app.send_task(t["name"], args=t.get("args", []), kwargs=t.get("kwargs", {}), queue="flownexus")
    for t in tasks
]
for t, result in zip(tasks, sent):
    try:
        value = result.get(timeout=timeout)
        print(json.dumps({"name": t["name"], "ok": True, "result": value}), flush=True)
    except Exception as e:  # the producer reports whatever get() raised
        print(json.dumps({"name": t["name"], "ok": False, "error": type(e).__name__ + ": " + str(e)}), flush=True)
