"""Where text comes from. A stage talks to a `Backend`; it never opens a socket or loads weights itself."""

from cai.backends.base import Backend, make_backend

__all__ = ["Backend", "make_backend"]
