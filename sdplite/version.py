"""sdplite's version, in one place: setup.cfg reads it, and so does whatever reports it.

A module of its own so that ``sdplite.wire`` (the client's user-agent) and
``sdplite.cli`` can name it without importing the ``sdplite`` package, which
imports them.
"""

VERSION = "0.1.0"
