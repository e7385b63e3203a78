"""A catalog that knows every object the document allows, so that schema-valid input to
start-workload starts a workload instead of meeting `Object cannot be rendered`. Objects a
test adds with `Peers.add_object` keep their own .blend file."""

from __future__ import annotations

from tests.helpers import FIXTURES
from tests.peers import Peers

BLEND_PATH = FIXTURES / "blend" / "blender-5.0" / "range_10_20.blend"


def know_every_object(peers: Peers) -> None:
    """Every customer's every object is the same small .blend file (frames 10 to 20)."""
    peers.every_object_exists(BLEND_PATH)
