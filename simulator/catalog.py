"""The catalog (the "MongoDB service"): which .blend each customer object has, and the
rendered images the supervisor reports, kept in memory and appended to a JSON-lines file.

For tests that send arbitrary valid ids (schemathesis), `every_object` makes every object of
every customer exist: one the catalog is asked about (lookup or change-state) and does not
know is added then, with the given .blend, as `add_object` would have added it. Off unless
asked for."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.blobs import BLEND_BUCKET, BlobStore

logger = logging.getLogger(__name__)

RECORD_FIELDS = ("objectId", "customerId", "frameNumber", "imageFilePath")
OBJECT_STATES = ("ready-to-render", "processing", "video-ready")
INITIAL_STATE = "processing"  # what the Customer Service sets before starting a workload
_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class BlendObject:
    customer_id: str
    object_id: str
    blend_path: str
    blend_hash: str

    def as_json(self) -> dict[str, str]:
        return {"blendFilePath": self.blend_path, "blendFileHash": self.blend_hash}


def _valid_ids(customer_id: str, object_id: str) -> bool:
    return all(
        _ID.fullmatch(value) and value not in (".", "..") for value in (customer_id, object_id)
    )


def _object_key(customer_id: str, object_id: str, name: str) -> str:
    """`customer_id/object_id/name`; ValueError when an id is not a catalog id."""
    for field, value in (("customer_id", customer_id), ("object_id", object_id)):
        if not _ID.fullmatch(value) or value in (".", ".."):
            raise ValueError(f"{field} must be 1-128 characters of A-Z a-z 0-9 . _ -")
    return f"{customer_id}/{object_id}/{name}"


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Catalog:
    """Objects by (customer, object) and the add-rendered-image records, thread-safe."""

    def __init__(self, blobs: BlobStore, records_file: Path) -> None:
        self._blobs = blobs
        self._records_file = records_file
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], BlendObject] = {}
        self._records: list[dict[str, Any]] = []
        self._received_at: list[float] = []
        self._per_customer: Counter[str] = Counter()
        self._states: dict[tuple[str, str], str] = {}
        self._state_changes: list[dict[str, Any]] = []
        self._every_object: Path | None = None

    def add_object(self, customer_id: str, object_id: str, blend_file: Path) -> str:
        """Copy `blend_file` into the blend-files bucket and register it; return its key."""
        blend_file = Path(blend_file)
        key = _object_key(customer_id, object_id, blend_file.name)
        return self._register(
            customer_id, object_id, self._blobs.copy_in(BLEND_BUCKET, key, blend_file)
        )

    def add_blend(self, customer_id: str, object_id: str, blend: bytes, name: str) -> str:
        """Store `blend` as the object's .blend file `name` and register it; return its key."""
        key = _object_key(customer_id, object_id, name)
        return self._register(customer_id, object_id, self._blobs.write(BLEND_BUCKET, key, blend))

    def _register(self, customer_id: str, object_id: str, stored: Path) -> str:
        key = f"{customer_id}/{object_id}/{stored.name}"
        entry = BlendObject(customer_id, object_id, key, _file_hash(stored))
        with self._lock:
            self._objects[(customer_id, object_id)] = entry
            self._states[(customer_id, object_id)] = INITIAL_STATE
        logger.info(
            "object added",
            extra={"event": "object-added", "customer_id": customer_id, "object_id": object_id},
        )
        return key

    def every_object(self, blend_file: Path | None) -> None:
        """Make every object of every customer exist with `blend_file` (None: only those
        added, as the real catalog)."""
        if blend_file is not None and not Path(blend_file).is_file():
            raise ValueError(f"no such .blend file: {blend_file}")
        with self._lock:
            self._every_object = None if blend_file is None else Path(blend_file)

    def _known(self, customer_id: str, object_id: str) -> BlendObject | None:
        """The object, added now when every object exists and it was not yet (ids the
        catalog could never hold stay unknown)."""
        with self._lock:
            found = self._objects.get((customer_id, object_id))
            every = self._every_object
        if found is not None or every is None or not _valid_ids(customer_id, object_id):
            return found
        self.add_object(customer_id, object_id, every)
        with self._lock:
            return self._objects.get((customer_id, object_id))

    def lookup(self, customer_id: str, object_id: str) -> BlendObject | None:
        return self._known(customer_id, object_id)

    def change_state(self, customer_id: str, object_id: str, state: str) -> str | None:
        """Set an object's state (one of OBJECT_STATES, checked by the caller); None when it
        changed, else what is unknown ("customer" or "object"), as the real service tells."""
        self._known(customer_id, object_id)
        with self._lock:
            if not any(customer == customer_id for customer, _ in self._objects):
                return "customer"
            if (customer_id, object_id) not in self._objects:
                return "object"
            self._states[(customer_id, object_id)] = state
            self._state_changes.append(
                {
                    "customer_id": customer_id,
                    "object_id": object_id,
                    "state": state,
                    "time": time.monotonic(),
                }
            )
        logger.info(
            "object state changed",
            extra={
                "event": "object-state",
                "customer_id": customer_id,
                "object_id": object_id,
                "state": state,
            },
        )
        return None

    def state_of(self, customer_id: str, object_id: str) -> str | None:
        with self._lock:
            return self._states.get((customer_id, object_id))

    def state_changes(self) -> list[dict[str, Any]]:
        """Every change-state applied since start, in order, with its monotonic time."""
        with self._lock:
            return [dict(change) for change in self._state_changes]

    def blend_for_hash(self, blend_hash: str) -> Path | None:
        """The stored .blend with this hash, for real rendering."""
        with self._lock:
            found = [o for o in self._objects.values() if o.blend_hash == blend_hash]
        return self._blobs.path(BLEND_BUCKET, found[0].blend_path) if found else None

    def objects(self) -> list[dict[str, str]]:
        with self._lock:
            return [
                {
                    "customer_id": o.customer_id,
                    "object_id": o.object_id,
                    **o.as_json(),
                    "objectState": self._states[(o.customer_id, o.object_id)],
                }
                for o in self._objects.values()
            ]

    def record(self, body: dict[str, Any]) -> None:
        """Keep one add-rendered-image body as received (fields checked by the caller)."""
        line = json.dumps(body, sort_keys=True)
        with self._lock:
            self._records.append(dict(body))
            self._received_at.append(time.monotonic())
            self._per_customer[str(body.get("customerId"))] += 1
            with self._records_file.open("a", encoding="utf-8") as out:
                out.write(line + "\n")
        logger.info(
            "rendered image recorded",
            extra={"event": "catalog-record", "frame": body.get("frameNumber")},
        )

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records]

    def count(self, customer_id: str) -> int:
        """How many records name this customer, without copying them (pollers use it)."""
        with self._lock:
            return self._per_customer[customer_id]

    def arrival_times(self) -> list[float]:
        """time.monotonic() at which each record of `records()` arrived, in the same order."""
        with self._lock:
            return list(self._received_at)
