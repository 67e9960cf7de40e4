"""The console's routes, as one Flask blueprint: :mod:`.views` and :mod:`.actions` fill it."""

from __future__ import annotations

from flask import Blueprint

__all__ = ["console"]

console = Blueprint("console", __name__, template_folder="templates", static_folder="static")
