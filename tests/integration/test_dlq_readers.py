"""Two readers of a RabbitMQ dead-letter queue at once: the second is never told "empty".

AMQP 0-9-1 has no peek: a listing (or a replay, a purge) holds every message
of the queue unacknowledged while it reads, and the broker shows a held
message to no one else. A second listing meanwhile saw the messages nobody
held: none, or some, and printed "no dead letters" (or a partial list) as if
that were the queue. A listing now waits for the other reader to finish
(``eventbus_dlq_browse_wait`` seconds), and past that raises
:class:`~eventbus.DeadLetterQueueBusy`: the queue could not be read, which
is not the same as empty.
"""

from __future__ import annotations

import pytest

from eventbus import DeadLetterQueueBusy, DeadLetterQueueUnavailable

from .conftest import Env
from .helpers import OrderPlaced
from .test_dlq_store import record_for

pytestmark = pytest.mark.rabbitmq

RECORDS = 5


@pytest.fixture
def env(rabbitmq_env: Env) -> Env:
    rabbitmq_env.app.conf.eventbus_dlq_browse_wait = 0.5
    name = rabbitmq_env.name("h")
    rabbitmq_env.bus.subscribe(OrderPlaced, name=name, handler=lambda e: None)
    for n in range(RECORDS):
        rabbitmq_env.bus.dead_letter_store.append(record_for(rabbitmq_env, name, n))
    return rabbitmq_env


def test_a_listing_while_another_reader_holds_the_queue_is_busy_not_empty(env: Env) -> None:
    # Given a listing in progress: it holds every record of the queue
    holding = iter(env.bus.dead_letter_store)
    first = next(holding)
    try:
        # When a second listing reads the queue meanwhile
        with pytest.raises(DeadLetterQueueBusy) as raised:
            listed = [record.id for record in env.bus.dead_letters]
            pytest.fail(f"listed {len(listed)} of {RECORDS} records while another reader held them")
    finally:
        holding.close()

    # Then it said the queue is held by another reader, naming the queue: not "empty"
    assert isinstance(raised.value, DeadLetterQueueUnavailable)
    assert env.dead_letter_queue in str(raised.value)
    assert "another reader" in str(raised.value)
    # And once that reader is done, a listing sees every record again
    assert first.id in {record.id for record in env.bus.dead_letters}
    assert len(list(env.bus.dead_letters)) == RECORDS


def test_the_count_and_stats_are_busy_too_never_zero(env: Env) -> None:
    holding = iter(env.bus.dead_letter_store)
    next(holding)
    try:
        with pytest.raises(DeadLetterQueueBusy):
            count = len(env.bus.dead_letters)
            pytest.fail(f"counted {count} of {RECORDS} records while another reader held them")
    finally:
        holding.close()
    assert len(env.bus.dead_letters) == RECORDS
