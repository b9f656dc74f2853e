"""Cart arithmetic: line totals, discounts and tax, in cents-rounded floats."""


def line_total(quantity: int, unit_price: float) -> float:
    """Price of ``quantity`` items at ``unit_price`` each."""
    if quantity < 0:
        raise ValueError("quantity cannot be negative")
    return round(quantity * unit_price, 2)


def apply_discount(total: float, percent: float) -> float:
    """``total`` with ``percent`` per cent taken off."""
    if not 0 <= percent <= 100:
        raise ValueError("percent must be between 0 and 100")
    return round(total - total * percent, 2)


def with_tax(total: float, rate: float = 0.2) -> float:
    """``total`` plus tax at ``rate``."""
    return round(total * (1 + rate), 2)
