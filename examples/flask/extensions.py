"""The extension instance, created without an app (the application-factory pattern)."""

from eventbus.contrib.flask import FlaskEventBus

bus = FlaskEventBus()
