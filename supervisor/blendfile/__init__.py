"""The active scene's frame range and output settings of a .blend file, read without Blender.

Customer files are untrusted: `read_scene_range` parses them in a child process with hard
limits on time, memory and reply size. `parse_scene_range` parses in the calling process
(tests, benchmarks, files we made).

`files` opens and decompresses, `layout` checks the block chain and the DNA before BAT
sees them, `reader` lets BAT decode the active scene, `isolation` runs `child` per file.
"""

from supervisor.blendfile.isolation import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_TIMEOUT,
    read_scene_range,
)
from supervisor.blendfile.reader import (
    DEFAULT_MAX_UNCOMPRESSED_BYTES,
    FILE_FORMATS,
    MAX_FRAME,
    MAX_RESOLUTION,
    MAX_RESOLUTION_PERCENTAGE,
    MIN_FRAME,
    SceneRange,
    parse_scene_range,
)

__all__ = [
    "DEFAULT_MAX_UNCOMPRESSED_BYTES",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_TIMEOUT",
    "FILE_FORMATS",
    "MAX_FRAME",
    "MAX_RESOLUTION",
    "MAX_RESOLUTION_PERCENTAGE",
    "MIN_FRAME",
    "SceneRange",
    "parse_scene_range",
    "read_scene_range",
]
