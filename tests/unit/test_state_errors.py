"""A state store that cannot be used raises StateStoreError, naming it: publish and the CLI.

Without a live server: nothing listens on port 1 (refused at once), and a
URL that redis-py cannot parse. tests/integration/test_state_errors.py has a
refused login, and what a worker does (the delivery is retried).
"""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from eventbus import EventBusError
from eventbus.cli.main import main
from eventbus.errors import StateStoreError
from tests.integration.helpers import OrderPlaced
from tests.unit.state_cli_app import make_bus

MARK = f"st4te-{uuid.uuid4().hex[:8]}"
URLS = {
    "refused": (f"redis://eventbus:{MARK}@127.0.0.1:1/0?password={MARK}", "connection refused"),
    "malformed": (f"redis://eventbus:{MARK}@127.0.0.1:notaport/0", "malformed"),
    "scheme": (f"rediz://eventbus:{MARK}@127.0.0.1:6379/0", "malformed"),
}


@pytest.mark.parametrize("kind", list(URLS))
def test_publish_raises_a_state_store_error_that_names_the_store(kind: str) -> None:
    url, problem = URLS[kind]
    bus = make_bus(url)
    with pytest.raises(EventBusError) as raised:
        bus.publish(OrderPlaced(order_id="o-1", quantity=1), aggregate_id="o-1")
    error = raised.value
    assert isinstance(error, StateStoreError), repr(error)
    text = str(error)
    assert "eventbus_redis_url" in text and problem in text, text
    assert "***" in text  # the URL is named, its password masked
    chain: BaseException | None = error
    while chain is not None:
        assert MARK not in str(chain), f"{type(chain).__name__}: {chain}"
        chain = chain.__cause__ or chain.__context__


@pytest.mark.parametrize("kind", list(URLS))
def test_cli_publish_says_so_in_one_line(kind: str) -> None:
    url, problem = URLS[kind]
    result = CliRunner().invoke(
        main,
        ["-A", "tests.unit.state_cli_app:bus", "publish", OrderPlaced.event_type,
         '{"order_id": "o-1", "quantity": 1}', "--aggregate-id", "o-1"],
        env={"EVENTBUS_STATE_TEST_URL": url},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "eventbus_redis_url" in line and problem in line, line
    assert "unexpected" not in line and MARK not in line
