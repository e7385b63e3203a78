"""A fake catalog that knows every object the document allows, so that schema-valid input to
start-workload starts a workload instead of meeting `Object cannot be rendered`. Objects a
test adds with `FakePeers.add_object` keep their own .blend file."""

from __future__ import annotations

from typing import Any

from tests.fakes import FakePeers
from tests.helpers import FIXTURES

BLEND = (FIXTURES / "blend" / "blender-5.0" / "range_10_20.blend").read_bytes()


class _EveryObject(dict[tuple[str, str], dict[str, str]]):
    def get(self, key: tuple[str, str], default: Any = None) -> dict[str, str]:
        customer_id, object_id = key
        anything = {"blendFilePath": f"{customer_id}/{object_id}/s.blend", "blendFileHash": "hash"}
        return super().get(key, anything)


class _SameBlend(dict[str, bytes]):
    def get(self, key: str, default: Any = None) -> bytes:
        return super().get(key, BLEND)


def know_every_object(peers: FakePeers) -> None:
    """Every customer's every object is the same small .blend file (frames 10 to 20)."""
    peers.objects = _EveryObject()
    peers.blend_files = _SameBlend()
