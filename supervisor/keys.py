"""Ids and blob keys: the one home of the rules for what the service accepts as an id, a
user id, a session id, an image extension and a blob key, and how a final frame key is made.

Every boundary (the HTTP API, the User Manager intake, the peer clients, the OpenAPI
document) checks against these, so a value valid at one edge is valid at all of them.
"""

from __future__ import annotations

import re
import unicodedata

from supervisor.errors import InvalidInput

ID_MAX_CHARS = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
# The same rule for a JSON Schema `pattern` (ECMA regex, unanchored by default): the
# characters of ID_PATTERN, and never "." or "..", which would be path segments.
ID_SCHEMA_PATTERN = r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,128}$"
ID_RULE = "1 to 128 characters of A-Z, a-z, 0-9, '.', '_', '-' (and not '.' or '..')"
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
SESSION_ID_PATTERN = ID_PATTERN
MAX_KEY_BYTES = 1024
MAX_ID_CHARS = 256
_EXTENSION = re.compile(r"[A-Za-z0-9]{1,10}")


def validate_id(name: str, value: object) -> str:
    """A customer, object or session id as the API takes it; anything else is refused."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name} is required")
    if not ID_PATTERN.fullmatch(value) or value in {".", ".."}:
        raise InvalidInput(f"{name} must be {ID_RULE}")
    return value


def has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def validate_blob_key(key: str) -> str:
    """Return `key` if it is a plain relative path; a key must never escape its folder."""
    if not isinstance(key, str) or not key:
        raise InvalidInput("blob key must be a non-empty string")
    if has_control(key):
        raise InvalidInput("blob key contains control characters")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidInput(f"blob key is longer than {MAX_KEY_BYTES} bytes")
    if "\\" in key:
        raise InvalidInput("blob key contains a backslash")
    if "://" in key:
        raise InvalidInput("blob key looks like a URL")
    if any(char in key for char in "%?#"):
        raise InvalidInput("blob key contains '%', '?' or '#' (URL syntax, never in a key)")
    if key.startswith("/"):
        raise InvalidInput("blob key is an absolute path")
    for segment in key.split("/"):
        if not segment:
            raise InvalidInput("blob key has an empty path segment")
        if segment in (".", ".."):
            raise InvalidInput("blob key has a '.' or '..' segment")
    return key


def validate_extension(extension: str) -> str:
    """Return the image extension lower-cased; it ends up in keys and the `type` field."""
    if not isinstance(extension, str) or not _EXTENSION.fullmatch(extension):
        raise InvalidInput("image extension must be 1-10 letters or digits")
    return extension.lower()


def check_text(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name} must be a non-empty string")
    if len(value) > MAX_ID_CHARS or has_control(value):
        raise InvalidInput(f"{name} is too long or contains control characters")
    return value


def check_id(name: str, value: str) -> str:
    """An id that becomes one path segment (of a URL or a blob key)."""
    check_text(name, value)
    if "/" in value or "\\" in value or value in (".", ".."):
        raise InvalidInput(f"{name} must not contain '/' or '\\' or be '.' or '..'")
    return value


def check_int(name: str, value: int, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer")
    if minimum is not None and value < minimum:
        raise InvalidInput(f"{name} must be at least {minimum}")
    return value


def final_frame_key(customer_id: str, object_id: str, frame_number: int, extension: str) -> str:
    """Key of a finished frame: `<customer>/<object>/<frame>.<ext>`.

    The frame is formatted with `{:03d}`: at least three digits, so 7 -> "007" and
    1234 -> "1234"; the sign counts as a digit, so -7 -> "-07" and -123 -> "-123".
    """
    check_id("customer_id", customer_id)
    check_id("object_id", object_id)
    check_int("frame_number", frame_number)
    ext = validate_extension(extension)
    return validate_blob_key(f"{customer_id}/{object_id}/{frame_number:03d}.{ext}")
