"""What the Celery worker runs: ``celery -A examples.flask.worker:celery worker``.

It builds the Flask app, so handlers run inside its app context.
"""

from examples.flask.app import create_app

flask_app = create_app()
celery = flask_app.extensions["eventbus"].celery
