"""A tiny Flask app on eventbus: POST /todos publishes TodoCreated; see README.md."""
