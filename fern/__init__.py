"""FERN: a local, hackable, fast cascaded voice agent."""

__version__ = "0.1.0"
