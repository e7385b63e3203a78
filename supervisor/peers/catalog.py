"""The catalog, i.e. the MongoDB service of CONTRACT.md §2: where each customer object's
.blend file is, which frames are stored, and the object's state."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from supervisor.errors import InvalidInput, ObjectNotRenderable
from supervisor.keys import MAX_ID_CHARS, check_id, check_int, has_control, validate_blob_key
from supervisor.peers.http import TRANSIENT_STATUSES, PeerClient

# Every module of the package logs as "supervisor.peers", one name to filter peer trouble by.
logger = logging.getLogger(__package__)


@dataclass(frozen=True)
class BlendFileRef:
    """Where the catalog says an object's .blend file is, and its hash."""

    path: str
    hash: str


class CatalogClient(PeerClient):
    """The MongoDB service: knows each customer object's .blend file."""

    peer = "catalog"
    _prefix = "/api/mongodb-service/blender-objects"

    def get_blend_file(self, object_id: str, customer_id: str) -> BlendFileRef:
        """Look the object up; refuse any answer that does not point inside its own folder."""
        check_id("object_id", object_id)
        check_id("customer_id", customer_id)
        operation = "get-blend-file-name"
        path = f"{self._prefix}/get-blend-file-name/{quote(object_id, safe='')}"
        with self._exchange(operation, "GET", path, params={"customer_id": customer_id}) as resp:
            status = resp.status_code
            if status >= 500 or status in TRANSIENT_STATUSES:
                raise self._status_error(resp, operation)
            if status != 200:
                raise self._not_renderable(object_id, f"the catalog answered HTTP {status}", status)
            body = self._read_json(resp, operation)
        return self._parse_blend_ref(body, object_id=object_id, customer_id=customer_id)

    def _not_renderable(
        self, object_id: str, reason: str, status: int | None = 200
    ) -> ObjectNotRenderable:
        logger.warning(
            "catalog get-blend-file-name refused object (status=%s): %s",
            status,
            reason,
            extra={
                "peer": self.peer,
                "peer_operation": "get-blend-file-name",
                "peer_status": status,
                "peer_transient": False,
            },
        )
        return ObjectNotRenderable(f"object {object_id} cannot be rendered: {reason}")

    def _parse_blend_ref(self, body: Any, *, object_id: str, customer_id: str) -> BlendFileRef:
        if not isinstance(body, Mapping):
            raise self._not_renderable(object_id, "the catalog answer is not a JSON object")
        blend_path = body.get("blendFilePath")
        if not isinstance(blend_path, str) or not blend_path:
            raise self._not_renderable(object_id, "the catalog gives no blendFilePath")
        try:
            validate_blob_key(blend_path)
        except InvalidInput as exc:
            raise self._not_renderable(object_id, f"unsafe blendFilePath ({exc})") from None
        parts = blend_path.split("/")
        if len(parts) != 3 or not parts[2].lower().endswith(".blend") or len(parts[2]) <= 6:
            raise self._not_renderable(
                object_id, "blendFilePath is not customer_id/object_id/<name>.blend"
            )
        if parts[0] != customer_id or parts[1] != object_id:
            raise self._not_renderable(
                object_id, "blendFilePath belongs to another customer or object"
            )
        blend_hash = body.get("blendFileHash")
        if not isinstance(blend_hash, str) or not blend_hash:
            raise self._not_renderable(object_id, "the catalog gives no blendFileHash")
        if len(blend_hash) > MAX_ID_CHARS or has_control(blend_hash):
            raise self._not_renderable(object_id, "blendFileHash is malformed")
        return BlendFileRef(path=blend_path, hash=blend_hash)

    def add_rendered_image(
        self, *, object_id: str, customer_id: str, frame_number: int, image_file_path: str
    ) -> None:
        """Tell the catalog a frame is stored; not retried once sent (may not be idempotent)."""
        body = {
            "objectId": check_id("object_id", object_id),
            "customerId": check_id("customer_id", customer_id),
            "frameNumber": check_int("frame_number", frame_number),
            "imageFilePath": validate_blob_key(image_file_path),
        }
        operation = "add-rendered-image"
        with self._post_json(operation, f"{self._prefix}/add-rendered-image", body) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)

    OBJECT_STATES = ("ready-to-render", "processing", "video-ready")

    def change_state(self, *, object_id: str, customer_id: str, state: str) -> None:
        """Set the object's state (we set `video-ready` when its workload completes)."""
        if state not in self.OBJECT_STATES:
            raise InvalidInput(f"object state must be one of {', '.join(self.OBJECT_STATES)}")
        body = {
            "objectId": check_id("object_id", object_id),
            "customerId": check_id("customer_id", customer_id),
            "objectState": state,
        }
        operation = "change-state"
        payload = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        path = f"{self._prefix}/change-state"
        with self._exchange(operation, "PUT", path, data=payload, headers=headers) as resp:
            if not 200 <= resp.status_code < 300:
                raise self._status_error(resp, operation)
