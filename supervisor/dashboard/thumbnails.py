"""Small previews of stored frames for the dashboard, fetched from the final store at most
once per frame: the first request fetches and shrinks the image while any others wait for
it, and the preview is kept in Redis as long as the frame's place in the latest-frames list.

An image Pillow cannot read (an EXR, a file that is not an image) gets a plain placeholder,
kept like a preview, so it is not fetched again either."""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError
from sqlalchemy import text

from supervisor.errors import NoActiveWorkload, PeerError, ThumbnailUnavailable
from supervisor.frames.latest import TTL_SECONDS
from supervisor.keys import SESSION_ID_PATTERN, check_int

if TYPE_CHECKING:
    from supervisor.services import Services

logger = logging.getLogger(__name__)

SIZE = (240, 135)
# Larger images are not decoded (a decompression bomb would take the web worker's memory).
MAX_PIXELS = 100_000_000
FETCH_LOCK_MS = 30_000
WAIT_SECONDS = 5.0
_PLACEHOLDER_COLOUR = (208, 212, 218)


@dataclass(frozen=True)
class Thumbnail:
    body: bytes
    content_type: str
    etag: str


def _key(session_id: str, frame: int) -> str:
    return f"supervisor:thumbnail:{session_id}:{frame}"


_FINAL_KEY = text(
    "SELECT final_key FROM frames WHERE workload_id = :session_id AND number = :frame "
    "AND state = 'rendered'"
)


def thumbnail(sv: Services, session_id: str, frame: int) -> Thumbnail:
    """The frame's preview (PNG). NoActiveWorkload when the frame is not stored;
    ThumbnailUnavailable when it cannot be had right now."""
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise NoActiveWorkload("no such session")
    check_int("frame", frame)
    key = _key(session_id, frame)
    cached = sv.redis.get(key)
    if cached:
        return _answer(cached)
    with sv.db.session() as session:
        final_key = session.scalar(_FINAL_KEY, {"session_id": session_id, "frame": frame})
    if final_key is None:
        raise NoActiveWorkload(f"frame {frame} of session {session_id} is not stored")
    lock = f"{key}:fetching"
    if not sv.redis.set(lock, b"1", nx=True, px=FETCH_LOCK_MS):
        return _wait_for(sv, key)
    try:
        cached = sv.redis.get(key)  # made while this request waited for the lock
        if cached:
            return _answer(cached)
        body = _fetch_and_shrink(sv, final_key, session_id, frame)
        sv.redis.set(key, body, ex=TTL_SECONDS)
        return _answer(body)
    finally:
        sv.redis.delete(lock)


def _wait_for(sv: Services, key: str) -> Thumbnail:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.05)
        cached = sv.redis.get(key)
        if cached:
            return _answer(cached)
    raise ThumbnailUnavailable("the preview is still being made")


def _answer(body: bytes) -> Thumbnail:
    return Thumbnail(body, "image/png", hashlib.blake2b(body, digest_size=12).hexdigest())


def _fetch_and_shrink(sv: Services, final_key: str, session_id: str, frame: int) -> bytes:
    fields = {"workload_id": session_id, "frame": frame}
    with tempfile.TemporaryDirectory(prefix="thumbnail-") as folder:
        local = Path(folder) / "frame"
        try:
            size = sv.peers.blob.download_final(
                final_key, local, max_bytes=sv.settings.thumbnail_max_source_bytes
            )
        except PeerError as exc:
            if exc.transient:
                logger.warning("frame preview not fetched", extra={**fields, "error": str(exc)})
                raise ThumbnailUnavailable("the Blob Service did not answer") from exc
            logger.warning("frame preview refused", extra={**fields, "error": str(exc)})
            return _placeholder()
        body = shrink(local)
    logger.info("frame preview made", extra={**fields, "bytes": size, "preview_bytes": len(body)})
    return body


def shrink(path: Path) -> bytes:
    """A PNG of at most SIZE from the image at `path`; a placeholder if Pillow cannot read
    it or it has more than MAX_PIXELS pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    return _placeholder()
                # JPEG decodes at a reduced scale; others decode in full, bounded above.
                image.draft("RGB", SIZE)
                image.thumbnail(SIZE)
                return _png(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombWarning):
        return _placeholder()


def _placeholder() -> bytes:
    return _png(Image.new("RGB", (SIZE[0], SIZE[1]), _PLACEHOLDER_COLOUR))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
