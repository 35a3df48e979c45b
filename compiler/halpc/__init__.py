"""halpc: split one CNN's spatial layers across several edge devices, bit-exactly."""
from __future__ import annotations

from halpc.errors import HalpcError

__all__ = ["HalpcError"]
__version__ = "0.1.0"
