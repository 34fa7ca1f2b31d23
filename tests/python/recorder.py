"""A Python Kinesis handler for esm's end-to-end tests, run by AWS's own runtime
interface client (awslambdaric) against esm's Lambda Runtime API host.

It appends one JSON line per invocation to $PY_OUT, in the format of
esm_e2e::BatchLine. With $PY_INIT_FAIL naming a file that holds a number above 0,
importing this module fails (and decrements it): awslambdaric reports that to
/runtime/init/error, as on Lambda.
"""

import base64
import json
import os

_init_fail = os.environ.get("PY_INIT_FAIL")
if _init_fail and os.path.exists(_init_fail):
    with open(_init_fail) as f:
        left = int(f.read().strip() or "0")
    if left > 0:
        with open(_init_fail, "w") as f:
            f.write(str(left - 1))
        raise RuntimeError(f"failing init on purpose ({left} left)")


def handler(event, context):
    records = event["Records"]
    shard = records[0]["eventID"].split(":")[0] if records else ""
    line = {
        "shard": shard,
        "request_id": context.aws_request_id,
        "records": [
            {
                "seq": r["kinesis"]["sequenceNumber"],
                "key": r["kinesis"]["partitionKey"],
                "len": len(base64.b64decode(r["kinesis"]["data"])),
                "event_id": r["eventID"],
                "data": base64.b64decode(r["kinesis"]["data"]).decode("utf-8", "replace")[:64],
            }
            for r in records
        ],
    }
    with open(os.environ["PY_OUT"], "a") as f:
        f.write(json.dumps(line) + "\n")
    return {"handled": len(records)}
