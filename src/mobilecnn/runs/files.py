"""The former home of the atomic file helpers, now :mod:`mobilecnn.files` (the ground floor).

Kept only because ``benchmarks/`` still imports ``mobilecnn.runs.files``; delete it once they import
:mod:`mobilecnn.files`.
"""

from ..files import atomic_write, atomic_write_bytes, atomic_write_text, read_json_object, sha256_of

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "read_json_object", "sha256_of"]
