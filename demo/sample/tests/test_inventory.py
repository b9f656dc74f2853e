from inventory import low_stock, total_value

ITEMS = [
    {"name": "bolt", "price": 0.5, "quantity": 100},
    {"name": "gear", "price": 12.0, "quantity": 3},
]


def test_total_value():
    assert total_value(ITEMS) == 86.0


def test_low_stock():
    assert low_stock(ITEMS) == ["gear"]
