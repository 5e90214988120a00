#!/usr/bin/env python3
"""One-off generator for the first version of the event catalog (events/<context>/<name>.v<N>.json).
The JSON files are the source of truth once written; edit them, not this script."""
import json, os
S = {"type": "string"}
NS = {"type": ["string", "null"]}
I = {"type": "integer", "minimum": 0}
UUID = {"type": "string", "format": "uuid"}
TS = {"type": "string", "format": "date-time"}
SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
REASON = {"type": "string", "enum": ["too_large", "type_not_allowed", "type_mismatch", "infected", "corrupt",
           "dimensions_exceeded", "active_content", "scan_failed", "processing_timeout"]}
SCAN = {"type": "object", "required": ["engine", "result"], "properties": {
    "engine": S, "result": {"type": "string", "enum": ["clean", "infected", "skipped", "failed"]}, "signature": NS}}
E = {
 ("upload", "requested", "internal", "A backend asked for an upload URL; the file is pending."):
   {"file_id": UUID, "user_id": NS, "kind": S, "filename": S, "declared_type": NS, "declared_size": {"type": ["integer", "null"], "minimum": 0}, "expires_at": TS},
 ("file", "uploaded", "public", "The bytes are in quarantine; checks have not run yet."):
   {"file_id": UUID, "user_id": NS, "kind": S, "filename": S, "declared_type": NS, "bytes": I, "sha256": SHA},
 ("validation", "started", "internal", "Validation of a file's bytes began; a processing.timeout is armed."):
   {"file_id": UUID, "kind": S, "timeout_at": TS},
 ("validation", "passed", "internal", "Every check of the kind's policy passed."):
   {"file_id": UUID, "kind": S, "detected_type": S, "bytes": I, "sha256": SHA, "scan": SCAN},
 ("validation", "failed", "internal", "A check failed; the file will be quarantined."):
   {"file_id": UUID, "kind": S, "reason": REASON, "detail": S, "detected_type": NS, "scan": SCAN},
 ("file", "promoted", "public", "The file passed every check and is servable from production storage."):
   {"file_id": UUID, "user_id": NS, "kind": S, "mime": S, "bytes": I, "sha256": SHA, "path": S, "scan": SCAN, "at": TS},
 ("file", "quarantined", "public", "The file failed a check and stays in quarantine."):
   {"file_id": UUID, "user_id": NS, "kind": S, "reason": REASON, "detail": S},
 ("file", "variant.generated", "public", "A variant (e.g. a thumbnail) of a promoted file exists."):
   {"file_id": UUID, "variant": S, "mime": S, "bytes": I, "width": I, "height": I},
 ("file", "deleted", "public", "The file was deleted: by a user, by erasure or by retention."):
   {"file_id": UUID, "user_id": NS, "kind": S, "cause": {"type": "string", "enum": ["user", "erasure", "retention"]}},
 ("upload", "expired", "public", "No bytes arrived before the signed upload URL expired."):
   {"file_id": UUID, "user_id": NS, "kind": S},
 ("processing", "job.created", "internal", "A processing job (e.g. a variant) was created for a file."):
   {"file_id": UUID, "job": S},
 ("processing", "timeout", "internal", "A long-running step did not finish in time."):
   {"file_id": UUID, "stage": S},
 ("resource", "ready", "internal", "The file and its required processing are done; it is servable."):
   {"file_id": UUID, "kind": S},
 ("resource", "rejected", "internal", "The file was rejected and will never be servable."):
   {"file_id": UUID, "kind": S, "reason": REASON},
 ("cleanup", "initiated", "internal", "The bytes of an expired or deleted file are being removed."):
   {"file_id": UUID, "cause": S, "objects": I},
 ("resource", "ttl.reached", "internal", "A file reached the end of its kind's retention."):
   {"file_id": UUID, "kind": S},
}
root = os.path.join(os.path.dirname(__file__), "..", "events")
for (ctx, name, vis, desc), props in E.items():
    d = os.path.join(root, ctx); os.makedirs(d, exist_ok=True)
    required = [k for k in props if not (ctx == "validation" and name == "failed" and k in ("scan", "detected_type"))]
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema",
           "$id": f"urn:airlock:event:{ctx}.{name}.v1", "title": f"{ctx}.{name} v1",
           "description": desc, "x-airlock-visibility": vis,
           "type": "object", "required": required, "properties": props, "additionalProperties": True}
    with open(os.path.join(d, f"{name}.v1.json"), "w") as f:
        json.dump(doc, f, indent=2); f.write("\n")
