"""Runnable examples of eventbus in web frameworks (not part of the installed package)."""
