"""`Simulator`: wires the blob store, catalog, users, User Manager and HTTP server together and
gives tests a start/stop lifecycle, inspection helpers and test controls.

The test controls (a journal of requests, counted failures, an acknowledgement override,
every object existing, `reset`) are off until a test turns them on; left alone, the peers
behave as CONTRACT.md section 7 says the real ones do."""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from simulator.amqp import EventPublisher
from simulator.blobs import FRAMES_BUCKET, TEMP_BUCKET, BlobStore
from simulator.catalog import Catalog
from simulator.config import SimulatorConfig
from simulator.faults import Faults
from simulator.journal import Call, Journal
from simulator.render import RenderFrame, real_renderer, render_frame
from simulator.scheduler import Scheduler
from simulator.user_manager import UserManager, UserManagerConsumer
from simulator.users import UserPool
from simulator.web import HttpServer

logger = logging.getLogger(__name__)

DEMO_CUSTOMER = "demo-customer"
DEMO_OBJECT = "demo-object"
RECENT = 50
T = TypeVar("T")
_FRAME_NAME = re.compile(r"(-?\d+)\.[A-Za-z0-9]+")


class SimulatorError(RuntimeError):
    """The simulator could not start (broker unreachable, port taken, bad renderer...)."""


class Simulator:
    """Every peer of the supervisor in one process. Use as a context manager, or call
    `start()` and `stop()`. Attributes other than the documented methods are for the
    simulator's own modules."""

    data_dir: Path
    blobs: BlobStore
    catalog: Catalog
    users: UserPool
    user_manager: UserManager

    def __init__(
        self, config: SimulatorConfig | None = None, *, renderer: RenderFrame | None = None
    ) -> None:
        self.config = config or SimulatorConfig()
        self._renderer = renderer
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._http: HttpServer | None = None
        self._consumer: UserManagerConsumer | None = None
        self._scheduler: Scheduler | None = None
        self._publisher: EventPublisher | None = None
        self._started = False
        self.faults = Faults()
        self.journal = Journal() if self.config.journal else None
        self.acknowledgement_override: bool | None = None
        self._render_with: RenderFrame = render_frame
        self._store_lock = threading.Lock()
        self._store_calls: Counter[str] = Counter()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Simulator:
        """Bring every component up; on failure, tear down what started and raise."""
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "simulator started",
            extra={"event": "started", "base_url": self.base_url, "users": self.config.users},
        )
        return self

    def _start(self) -> None:
        config = self.config
        if config.data_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="simulator-")
            self.data_dir = Path(self._tempdir.name)
        else:
            self.data_dir = config.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.data_dir)
        self._render_with = self._renderer or self._pick_renderer()
        self._scheduler = Scheduler(config.workers)
        self._scheduler.start()
        self._publisher = EventPublisher(
            config.broker_url,
            duplicate=config.duplicate,
            quirks=config.quirks,
            seed=config.seed,
            reorder=config.reorder,
            scheduler=self._scheduler,
        )
        if not config.amqp:
            # Nothing may reach a broker: a publish is dropped (and logged), never connects.
            self._publisher.close()
        self._build_peers(self._scheduler, self._publisher)
        if config.amqp:
            self._consumer = UserManagerConsumer(
                config.broker_url,
                config.user_manager_queue,
                self.user_manager,
                private=config.private_queue,
            )
            if not self._consumer.start(config.broker_ready_timeout):
                raise SimulatorError(
                    f"broker not ready within {config.broker_ready_timeout}s "
                    f"({self.config.public()['broker_url']})"
                )
        try:
            self._http = HttpServer(self, config.host, config.port)
        except OSError as exc:
            raise SimulatorError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc
        self._http.start()
        self.user_manager.start()

    def _build_peers(self, scheduler: Scheduler, publisher: EventPublisher) -> None:
        """The catalog, users and User Manager as at start (the demo object seeded)."""
        config = self.config
        self.catalog = Catalog(self.blobs, self.data_dir / "catalog-records.jsonl")
        self._seed_demo()
        self.users = UserPool(
            config,
            blobs=self.blobs,
            route=lambda session_id, topic, data: self.user_manager.forward(
                session_id, topic, data
            ),
            scheduler=scheduler,
            renderer=self._render_with,
            blend_lookup=self.catalog.blend_for_hash,
        )
        self.user_manager = UserManager(
            self.users,
            publisher,
            scheduler,
            join_delay=config.join_delay,
            join_batch=config.join_batch,
            real=config.real_peers,
        )

    def _pick_renderer(self) -> RenderFrame:
        if self.config.render == "placeholder":
            return render_frame
        try:
            return real_renderer()
        except ImportError as exc:
            raise SimulatorError("--render real needs Blender's `bpy` module") from exc

    def _seed_demo(self) -> None:
        blend = self.config.demo_blend_path()
        if blend is None:
            return
        if not blend.is_file():
            logger.warning("demo .blend not found: %s", blend, extra={"event": "demo-missing"})
            return
        self.add_object(DEMO_CUSTOMER, DEMO_OBJECT, blend)

    def stop(self) -> None:
        """Stop serving, consuming and rendering; join threads, close connections. Idempotent."""
        if self._http is not None:
            self._http.stop()
            self._http = None
        if self._consumer is not None:
            self._consumer.stop()
            self._consumer = None
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
        if self._started:
            logger.info("simulator stopped", extra={"event": "stopped"})
        self._started = False

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ API for tests and humans

    @property
    def base_url(self) -> str:
        """What MONGODB_SERVICE, BLOB_SERVICE, USER_SERVICE and USER_MANAGER_SERVICE take."""
        if self._http is None:
            raise SimulatorError("the simulator is not running")
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._http.port}"

    def add_object(self, customer_id: str, object_id: str, blend_path: Path | str) -> str:
        """Register a customer object backed by a local .blend; return its blendFilePath."""
        return self.catalog.add_object(customer_id, object_id, Path(blend_path))

    def add_object_bytes(
        self, customer_id: str, object_id: str, blend: bytes, name: str = "s.blend"
    ) -> str:
        """Register a customer object whose .blend file `name` holds `blend`; return its
        blendFilePath."""
        return self._running().catalog.add_blend(customer_id, object_id, blend, name)

    def catalog_object(self, customer_id: str, object_id: str) -> dict[str, str] | None:
        """What get-blend-file-name answers for an object (blendFilePath, blendFileHash), or
        None when it answers 404."""
        found = self._running().catalog.lookup(customer_id, object_id)
        return None if found is None else found.as_json()

    def every_object_exists(self, blend_path: Path | str | None) -> None:
        """Test control: every object of every customer exists, backed by `blend_path` (its
        file name kept), added to the catalog the first time the catalog is asked about it;
        objects added otherwise keep their own file. None turns it off (the default, as the
        real catalog: unknown objects are 404)."""
        self._running().catalog.every_object(None if blend_path is None else Path(blend_path))

    def blob_keys(self, bucket: str) -> list[str]:
        """Every key in a bucket (`blend-files`, `temp`, `rendered-frames`), sorted."""
        return self._running().blobs.keys(bucket)

    def read_blob(self, bucket: str, key: str) -> bytes:
        """A blob's bytes; FileNotFoundError when there is none."""
        return self._running().blobs.read(bucket, key)

    def write_blob(self, bucket: str, key: str, data: bytes) -> None:
        """Put a blob in place (e.g. a user's upload to the temp bucket)."""
        self._running().blobs.write(bucket, key, data)

    def delete_blob(self, bucket: str, key: str) -> bool:
        """Remove a blob; False when there was none."""
        return self._running().blobs.delete(bucket, key)

    def requests(self, path_suffix: str = "") -> list[Call]:
        """Test control: the requests the peers received whose path ends with `path_suffix`,
        in arrival order (simulator/journal.py says which are kept). SimulatorError unless
        started with `journal=True`."""
        if self.journal is None:
            raise SimulatorError("no journal: start the simulator with journal=True")
        return self.journal.calls(path_suffix)

    def fail_next(self, path_suffix: str, status: int = 503, times: int = 1) -> None:
        """Test control: the next `times` requests to a peer path ending in `path_suffix` are
        answered `status` (`{"message": "injected fault"}`), nothing done; replaces that
        suffix's previous count. ValueError on a bad suffix, status or count."""
        self.faults.fail_next(path_suffix, status, times)

    def failures(self) -> dict[str, int]:
        """Counted failures still to come, by path suffix."""
        return self.faults.failures()

    def clear_failures(self) -> int:
        """End every counted failure now; return how many had requests left."""
        return self.faults.clear_failures()

    def override_acknowledgement(self, answer: bool | None) -> None:
        """Test control: the User Service answers every acknowledged send (a valid one, to
        any user, connected or not) with `answer`, as if the node had; None (the default)
        passes the node's own answer, or the real service's error for a user not connected."""
        if answer is not None and not isinstance(answer, bool):
            raise ValueError("answer must be True, False or None")
        self.acknowledgement_override = answer

    def reset(self) -> None:
        """Back to the state at start, for the next test on the same running simulator:
        empty buckets, a catalog with only the demo object, no registration, no fault,
        an empty journal, every test control off. Only for a simulator without AMQP
        (`amqp=False`, hence no simulated users), whose state is all here; SimulatorError
        otherwise."""
        if self._scheduler is None or self._publisher is None:
            raise SimulatorError("the simulator is not running")
        if self.config.amqp:
            raise SimulatorError("reset() needs a simulator started with amqp=False")
        self.faults.reset()
        if self.journal is not None:
            self.journal.clear()
        self.acknowledgement_override = None
        with self._store_lock:
            self._store_calls.clear()
        self.blobs.clear()
        (self.data_dir / "catalog-records.jsonl").unlink(missing_ok=True)
        self._build_peers(self._scheduler, self._publisher)

    def stored_frames(self, customer_id: str, object_id: str) -> dict[int, bytes]:
        """Final frames stored by store-image for one object, by frame number."""
        prefix = f"{customer_id}/{object_id}/"
        frames = {}
        for key in self.blobs.keys(FRAMES_BUCKET):
            name = key[len(prefix) :] if key.startswith(prefix) else ""
            match = _FRAME_NAME.fullmatch(name)
            if match:
                frames[int(match.group(1))] = self.blobs.read(FRAMES_BUCKET, key)
        return frames

    def count_store(self, key: str) -> None:
        """Note one store-image call for a final key (called by the Blob Service route)."""
        with self._store_lock:
            self._store_calls[key] += 1

    def store_calls(self, customer_id: str, object_id: str) -> dict[int, int]:
        """How many store-image calls each frame of one object received."""
        prefix = f"{customer_id}/{object_id}/"
        with self._store_lock:
            calls = dict(self._store_calls)
        counts: dict[int, int] = {}
        for key, count in calls.items():
            match = _FRAME_NAME.fullmatch(key[len(prefix) :]) if key.startswith(prefix) else None
            if match:
                counts[int(match.group(1))] = counts.get(int(match.group(1)), 0) + count
        return counts

    def user_timeline(self) -> list[dict[str, Any]]:
        """What each render node saw and did, in time order: `list` (a start-rendering with
        its frames), `upload` (a frame it uploaded), `reset` (stop-work, release, restart) and
        `stall` (it hung, holding `frames`), each with `t` (time.monotonic()) and `user_id`."""
        return self.users.timeline()

    def joined_log(self) -> list[dict[str, Any]]:
        """Each user handed to a session: `user_id`, `session_id`, `t` (time.monotonic())."""
        return [
            {"user_id": user, "session_id": entry["session_id"], "t": entry["time"]}
            for entry in self.user_manager.new_users_log()
            for user in entry["users"]
        ]

    def catalog_records(self) -> list[dict[str, Any]]:
        """add-rendered-image bodies received since start, in order."""
        return self.catalog.records()

    def catalog_count(self, customer_id: str) -> int:
        """How many add-rendered-image records name `customer_id`."""
        return self.catalog.count(customer_id)

    def catalog_arrival_times(self) -> list[float]:
        """time.monotonic() of each catalog record's arrival, in `catalog_records()` order."""
        return self.catalog.arrival_times()

    def temp_keys(self) -> list[str]:
        """Keys still in the temp bucket (users' uploads not yet deleted by the supervisor)."""
        return self.blobs.keys(TEMP_BUCKET)

    def published(self) -> dict[str, int]:
        """Messages sent to SESSION_SUPERVISOR_EXCHANGE so far, by topic (duplicates count)."""
        return self._publisher.stats()["published"] if self._publisher else {}

    def uploaded_digests(self, session_id: str | None = None) -> dict[int, set[str]]:
        """SHA-256 (hex) of every image a user uploaded to the temp bucket, by frame number:
        every user's and every re-render's, kept after the temp copy is deleted. One session's,
        or with `session_id=None` all sessions' merged."""
        if not self._started:
            raise SimulatorError("the simulator is not running")
        return self.users.uploaded_digests(session_id)

    def inject_fault(self, service: str, mode: str, seconds: float) -> None:
        """Make one HTTP peer fail for `seconds` (monotonic): `service` is `catalog`, `blob`,
        `user-service` or `user-manager` (its HTTP registration only, never its AMQP side);
        `mode` is `error` (500 `{"message": "injected fault"}`, nothing done) or `down` (the
        connection is dropped without a response). Replaces that service's current fault;
        ValueError on an unknown service or mode or a non-positive duration."""
        self.faults.inject(service, mode, seconds)

    def clear_faults(self) -> None:
        """End every injected fault now."""
        self.faults.clear()

    def restart_user_manager(self) -> list[str]:
        """Play a User Manager restart (CONTRACT.md section 7): every registration, demand and
        user-to-session mapping is forgotten and every user assigned to a session stops,
        forgets it and is idle again; nothing is routed to a session until it registers
        and demands again. Return the users that were reset."""
        return self._running().user_manager.restart()

    def object_state(self, customer_id: str, object_id: str) -> str | None:
        """The catalog's objectState of an object (`processing` when added, then whatever
        change-state set), or None for an unknown object."""
        return self._running().catalog.state_of(customer_id, object_id)

    def object_state_changes(self) -> list[dict[str, Any]]:
        """change-state calls applied, in order: customer_id, object_id, state, time."""
        return self._running().catalog.state_changes()

    def user_manager_sessions(self) -> dict[str, dict[str, Any]]:
        """The User Manager's view by session id: `registered` (bool), `demand` (queued users
        still wanted) and `users` (mapped to it, sorted), for every session registered or
        with users still mapped to it (a cleaned-up session's unreleased users show here)."""
        return self._running().user_manager.sessions()

    def listed_sessions(self) -> dict[str, int]:
        """Sessions the User Manager still lists as active (one entry per new-session not
        yet matched by a cleanup-session); empty when every supervisor cleaned up."""
        return self._running().user_manager.listed_sessions()

    def cleanup_calls(self) -> dict[str, int]:
        """cleanup-session calls received, by session id (unknown sessions included)."""
        return self._running().user_manager.cleanup_calls()

    def demand_log(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Messages received on USER_MANAGER_EXCHANGE, in order, each with `topic`,
        `session_id`, `data`, `time` (time.monotonic() at receipt) and `outcome` (`applied`,
        or `ignored: ...` with the reason); only `session_id`'s when given."""
        log = self._running().user_manager.demand_log()
        return [e for e in log if session_id is None or e["session_id"] == session_id]

    def new_users_log(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """`new-users` sent, in order, each with `session_id`, `users` and `time`
        (time.monotonic() when sent); only `session_id`'s when given."""
        log = self._running().user_manager.new_users_log()
        return [e for e in log if session_id is None or e["session_id"] == session_id]

    def dropped_events(self) -> dict[str, int]:
        """Users' events the peers did not forward to a supervisor, by reason (real peer
        mode: `user-rendering-completed`, error reports with a hash, unregistered sessions)."""
        return self._running().user_manager.dropped_events()

    def dropped_uploads(self) -> set[str]:
        """Temp keys of uploads whose `user-frame-rendered` the User Manager dropped: no
        supervisor ever hears of them, so nobody can delete them."""
        return self._running().user_manager.dropped_upload_keys()

    def _running(self) -> Simulator:
        if not self._started:
            raise SimulatorError("the simulator is not running")
        return self

    def wait_until(
        self, predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02
    ) -> T:
        """Poll `predicate` until it returns something truthy and return that;
        TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(interval)

    def state(self) -> dict[str, Any]:
        """What `GET /simulator/state` answers."""
        if not self._started:
            raise SimulatorError("the simulator is not running")
        events = self._publisher.stats() if self._publisher else {}
        demand = self.user_manager.stats()
        records = self.catalog.records()
        return {
            "base_url": self.base_url if self._http else None,
            "config": self.config.public(),
            "sessions": self.user_manager.state(),
            "idle_users": self.users.idle(),
            "users": self.users.snapshot(),
            "catalog": {
                "objects": self.catalog.objects(),
                "records_count": len(records),
                "records": records[-RECENT:],
            },
            "broker": {
                "queue": self._consumer.queue.name if self._consumer else None,
                "consumer_connects": self._consumer.connects if self._consumer else 0,
            },
            "rendered_frames": self.blobs.keys(FRAMES_BUCKET),
            "temp_keys": self.temp_keys(),
            "published": events.get("published", {}),
            "published_duplicates": events.get("duplicates", 0),
            "publish_failures": events.get("failures", 0),
            "recent_events": events.get("recent", [])[-RECENT:],
            "demand_received": demand["received"],
            "ignored_messages": {
                "count": demand["ignored_count"],
                "by_reason": demand["ignored_by_reason"],
                "recent": demand["ignored_recent"],
            },
            "dropped_user_messages": self.users.dropped_stats(),
            "user_manager": self.user_manager.inspection(),
            "object_state_changes": self.catalog.state_changes()[-RECENT:],
            "faults": self.faults.snapshot(),
        }
