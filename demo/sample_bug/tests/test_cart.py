import pytest
from pricing.cart import apply_discount, line_total, with_tax


def test_line_total() -> None:
    assert line_total(3, 2.5) == 7.5


def test_negative_quantity_is_refused() -> None:
    with pytest.raises(ValueError):
        line_total(-1, 2.5)


def test_discount() -> None:
    assert apply_discount(200.0, 15) == 170.0


def test_no_discount() -> None:
    assert apply_discount(99.99, 0) == 99.99


def test_tax() -> None:
    assert with_tax(100.0) == 120.0
