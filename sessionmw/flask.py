"""The Flask extension's public import path (the adapter lives in :mod:`sessionmw.adapters.flask`)."""

from __future__ import annotations

from .adapters.flask import FlaskServerSession as FlaskServerSession
from .adapters.flask import FlaskSession as FlaskSession
from .adapters.flask import FlaskSessionInterface as FlaskSessionInterface

__all__ = ["FlaskServerSession", "FlaskSession", "FlaskSessionInterface"]
