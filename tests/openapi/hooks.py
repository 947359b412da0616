"""schemathesis hooks: the two rules of the contract that JSON Schema cannot
state, so that a refusal they explain is not reported as "a schema-valid
request rejected" (ST202). Every other failure stands.

1. Byte bounds. A trackingId, a signature, an idempotencyKey and a token
   entry's prefix are at most 256 bytes of UTF-8; `maxLength` counts
   characters, so 100 characters of `€` are schema-valid and 300 bytes.
2. A `since` this server could not have issued. A well-formed id whose
   epoch is in the future (or whose seq is beyond the history) is
   `INVALID_SINCE`; a pattern cannot compare with the clock.

A dropped failure is counted in the summary ("dropped by filter_failure"),
and this file checks what the server said: the code, and for byte bounds
that every detail names a field whose value is over its bound.
"""

import time

import schemathesis

MAX_BYTES = 256
REJECTED_POSITIVE_DATA = "ST202"


def _over_bytes(value, bound=MAX_BYTES):
    return isinstance(value, str) and len(value) <= bound < len(value.encode("utf-8", "surrogatepass"))


def _entry_over_bytes(entry):
    # A prefix entry ("merchant-42:*") is bounded without its `*`.
    if isinstance(entry, str) and entry.endswith("*") and len(entry) > 1:
        return _over_bytes(entry[:-1])
    return _over_bytes(entry)


def _error(response):
    try:
        return response.json().get("error", {})
    except ValueError:
        return {}


def _explained_refusal(case, response):
    """Whether a 400 to schema-valid data is one of the two rules above."""
    if response.status_code != 400:
        return False
    error = _error(response)
    path = case.operation.path
    if path == "/v1/events":
        query = case.query or {}
        if error.get("code") == "INVALID_TRACKING_ID":
            return _over_bytes(query.get("trackingId"))
        if error.get("code") == "INVALID_SINCE":
            epoch = str(query.get("since", "")).split("-", 1)[0]
            return epoch.isdigit() and int(epoch) > time.time() * 1000
        return False
    details = error.get("details") or []
    if error.get("code") != "INVALID_PAYLOAD" or not details:
        return False
    body = case.body
    if path == "/v1/payments":
        items = body if isinstance(body, list) else [body]
        for d in details:
            item = items[d.get("index", -1)] if 0 <= d.get("index", -1) < len(items) else None
            field = d.get("field")
            if not isinstance(item, dict) or field not in ("trackingId", "signature", "idempotencyKey"):
                return False
            if not _over_bytes(item.get(field)):
                return False
        return True
    if path == "/v1/ws/tokens":
        entries = body.get("trackingIds") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            return False
        for d in details:
            # "trackingIds[3]: ..." names the entry.
            head = str(d.get("message", "")).split("]", 1)[0]
            at = head.removeprefix("trackingIds[")
            if d.get("field") != "trackingIds" or not at.isdigit() or int(at) >= len(entries):
                return False
            if not _entry_over_bytes(entries[int(at)]):
                return False
        return True
    return False


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if getattr(failure, "code", None) == REJECTED_POSITIVE_DATA and _explained_refusal(case, response):
        return False
    return True
