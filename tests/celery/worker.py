"""A Celery 5 worker for tests/system/celery.rs, as a Python user of
flownexus would write one: a task per event kind, each appending its name
and keyword arguments, one JSON line a task, to $FNX_RECORD.

    FNX_BROKER=redis+socket:///tmp/x/redis.sock FNX_RECORD=/tmp/x/tasks.jsonl \
        celery -A worker worker -P solo -Q celery
"""

import json
import os

from celery import Celery

app = Celery("fnx_test_worker", broker=os.environ["FNX_BROKER"])
app.conf.update(
    accept_content=["json"],
    task_serializer="json",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

KINDS = [
    "device_registered",
    "device_updated",
    "device_deregistered",
    "device_expired",
    "values_reported",
    "operation_finished",
    "firmware_update_changed",
    "campaign_changed",
]


def recorder(kind):
    def record(**kwargs):
        with open(os.environ["FNX_RECORD"], "a", encoding="utf-8") as out:
            out.write(json.dumps({"task": "flownexus." + kind, "kwargs": kwargs}) + "\n")

    record.__name__ = kind
    return record


for _kind in KINDS:
    app.task(name="flownexus." + _kind)(recorder(_kind))
