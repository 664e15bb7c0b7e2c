"""Every request handler, registered: importing this fills the table that
``dispatch`` runs (the server imports it; so may tests that call handlers)."""

from . import fencing_ops, ops  # noqa: F401  (register their operations)
from .registry import OPS, dispatch  # noqa: F401  (re-exported)
