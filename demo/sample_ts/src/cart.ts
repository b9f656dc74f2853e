/** Cart arithmetic: line totals, discounts and tax, rounded to cents. */

function cents(value: number): number {
  return Math.round(value * 100) / 100;
}

/** Price of `quantity` items at `unitPrice` each. */
export function lineTotal(quantity: number, unitPrice: number): number {
  if (quantity < 0) {
    throw new RangeError("quantity cannot be negative");
  }
  return cents(quantity * unitPrice);
}

/** `total` with `percent` per cent taken off. */
export function applyDiscount(total: number, percent: number): number {
  if (percent < 0 || percent > 100) {
    throw new RangeError("percent must be between 0 and 100");
  }
  return cents(total - total * percent);
}

/** `total` plus tax at `rate`. */
export function withTax(total: number, rate = 0.2): number {
  return cents(total * (1 + rate));
}
