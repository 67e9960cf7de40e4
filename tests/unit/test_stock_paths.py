"""Every integration module is placed: run again on stock paths, or run once with a reason."""

from __future__ import annotations

from tests import stock_paths


def test_every_integration_module_is_placed_once() -> None:
    on_disk = stock_paths.modules_on_disk()
    stock, once = set(stock_paths.STOCK), set(stock_paths.ONCE)
    assert not stock & once, f"in both tables: {sorted(stock & once)}"
    assert on_disk - stock - once == set(), "place each in tests/stock_paths.py"
    assert (stock | once) - on_disk == set(), "no such module in tests/integration"
    assert all(reason for reason in stock_paths.ONCE.values())
