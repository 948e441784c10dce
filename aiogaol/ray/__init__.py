"""aiogaol on a Ray cluster: ``RayPool``, one actor per node holding a local pool of jails.

Install with ``pip install 'aiogaol[ray]'``.  The core of aiogaol never imports this package (nor Ray).
See docs/scale-out.md.
"""

try:
    import ray as _ray  # noqa: F401  (absolute: the real Ray, not this package)
except ImportError as e:  # pragma: no cover - only where the extra is not installed
    raise ImportError(f"aiogaol.ray needs Ray: pip install 'aiogaol[ray]' ({e})") from e

from ._pool import RayPool, RayResults
from ._records import NodeLost, NodeStats, PythonJob, RayPoolError, RayPoolStats

__all__ = ["NodeLost", "NodeStats", "PythonJob", "RayPool", "RayPoolError", "RayPoolStats", "RayResults"]
