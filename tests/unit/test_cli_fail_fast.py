"""An operator's command fails fast when the broker does not answer: a short, bounded retry.

kombu retries a connection for up to the connect timeout (Celery's
``broker_connection_timeout``, 4 s by default; 20 s in this test's app) and
a publish by ``task_publish_retry_policy`` (which eventbus repeats for a whole
event): a refused broker took 4-8 s to be reported. A command run by an
operator tries again once, 0.5 s later, then says what is wrong in one line:
the CLI sets kombu's connection retry and the publish retry policy to that,
for its own process.

The broker here is a socket that accepts every connection and closes it at
once: each connection attempt is counted, whatever the clock says.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from eventbus.cli.main import main

APP = ["-A", "tests.unit.closed_broker_app:bus"]


class Slammer:
    """A TCP listener on loopback that closes every connection it accepts, counting them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def slammer() -> Iterator[Slammer]:
    server = Slammer()
    yield server
    server.close()


def invoke(slammer: Slammer, *args: str) -> Result:
    url = f"amqp://guest:guest@127.0.0.1:{slammer.port}//"
    return CliRunner().invoke(main, [*APP, *args], env={"EVENTBUS_FAIL_FAST_TEST_BROKER": url})


@pytest.mark.parametrize("command", [["dlq", "list"], ["dlq", "stats"], ["dlq", "purge", "--yes"]])
def test_reading_the_dlq_tries_the_broker_once_more_then_fails(
    slammer: Slammer, command: list[str]
) -> None:
    result = invoke(slammer, *command)
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: cannot "), line
    # A first try, then kombu's retry as the CLI sets it: at once, and 0.5 s later
    assert 1 < slammer.accepted <= 3, slammer.accepted


def test_publishing_tries_the_broker_once_more_then_fails(slammer: Slammer) -> None:
    result = invoke(slammer, "publish", "it.order.placed", '{"order_id": "o-1", "quantity": 1}')
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: could not publish it.order.placed"), line
    # Two tries of the event, not the four of the app's policy (max_retries=3)
    assert slammer.accepted == 2, slammer.accepted
