"""The peers of the integration and hostile tests: the simulator's HTTP side (simulator/), in
this process, without simulated users or AMQP. One simulator serves a whole test session
(one per xdist worker); the `peers` fixture resets it before each test.

`Peers` is a thin view of that simulator with the names the tests use; it keeps no peer
state of its own. Left alone, the peers answer as CONTRACT.md section 7 says the real ones
do; a test that wants something else says so (`fail_next`, `acknowledge`,
`every_object_exists`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from simulator import Simulator, SimulatorConfig
from simulator.blobs import FRAMES_BUCKET, TEMP_BUCKET
from simulator.journal import Call

# HTTP only: no users, no broker; every request kept for `calls`.
TEST_PEERS = SimulatorConfig(users=0, amqp=False, journal=True, demo_blend=None, workers=1)


@dataclass(frozen=True)
class Recorded:
    """One request the peers received, with readers for the bodies the supervisor sends."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, call: Call) -> Recorded:
        return cls(call.method, call.path, call.query, call.headers, call.body)

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}

    def multipart(self) -> dict[str, bytes]:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + self.body
        )
        return {
            part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()
        }


class _Bucket(Mapping[str, bytes]):
    """One bucket of the simulator's Blob Service, key -> bytes, read where it lies."""

    def __init__(self, sim: Simulator, bucket: str) -> None:
        self._sim = sim
        self._bucket = bucket

    def __getitem__(self, key: str) -> bytes:
        try:
            return self._sim.read_blob(self._bucket, key)
        except FileNotFoundError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._sim.blob_keys(self._bucket))

    def __len__(self) -> int:
        return len(self._sim.blob_keys(self._bucket))

    def __repr__(self) -> str:
        return repr(dict(self))


class _WritableBucket(_Bucket, MutableMapping[str, bytes]):
    def __setitem__(self, key: str, data: bytes) -> None:
        self._sim.write_blob(self._bucket, key, data)

    def __delitem__(self, key: str) -> None:
        if not self._sim.delete_blob(self._bucket, key):
            raise KeyError(key)


class _Failures(Mapping[str, int]):
    """Counted failures still to come, by path suffix; `clear` ends them."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def __getitem__(self, suffix: str) -> int:
        return self._sim.failures()[suffix]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sim.failures())

    def __len__(self) -> int:
        return len(self._sim.failures())

    def clear(self) -> None:
        self._sim.clear_failures()


class Peers:
    """The catalog, Blob Service, User Service and User Manager registration as one test sees
    them: `temp_blobs` (users' uploads, writable), `stored` (final frames), `calls` (requests
    received), `fail_next` / `failures`, `acknowledge`."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.temp_blobs: MutableMapping[str, bytes] = _WritableBucket(sim, TEMP_BUCKET)
        self.stored: Mapping[str, bytes] = _Bucket(sim, FRAMES_BUCKET)
        self.failures = _Failures(sim)

    @property
    def base_url(self) -> str:
        return self.sim.base_url

    def add_object(
        self, customer_id: str, object_id: str, blend: bytes, name: str = "s.blend"
    ) -> str:
        """Put an object in the catalog; return its blendFilePath."""
        return self.sim.add_object_bytes(customer_id, object_id, blend, name)

    def blend_hash(self, customer_id: str, object_id: str) -> str:
        """The catalog's blendFileHash of an object, as the supervisor hands it to users."""
        found = self.sim.catalog_object(customer_id, object_id)
        if found is None:
            raise KeyError((customer_id, object_id))
        return found["blendFileHash"]

    def every_object_exists(self, blend_path: Path) -> None:
        """Every object of every customer exists with this .blend (for fuzzed ids)."""
        self.sim.every_object_exists(blend_path)

    def calls(self, path_suffix: str) -> list[Recorded]:
        return [Recorded.of(call) for call in self.sim.requests(path_suffix)]

    def fail_next(self, path_suffix: str, status: int = 503, times: int = 1) -> None:
        self.sim.fail_next(path_suffix, status, times)

    @property
    def acknowledge(self) -> bool | None:
        """What the User Service answers every acknowledged send; None: the real answer (a
        user not connected to the simulator, as the tests' users are, gets a 500)."""
        return self.sim.acknowledgement_override

    @acknowledge.setter
    def acknowledge(self, answer: bool | None) -> None:
        self.sim.override_acknowledgement(answer)
