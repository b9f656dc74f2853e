import { describe, expect, test } from "vitest";
import { applyDiscount, lineTotal, withTax } from "./cart";

describe("lineTotal", () => {
  test("multiplies quantity by unit price", () => {
    expect(lineTotal(3, 2.5)).toBe(7.5);
  });

  test("refuses a negative quantity", () => {
    expect(() => lineTotal(-1, 2.5)).toThrow(RangeError);
  });
});

describe("applyDiscount", () => {
  test("takes 15% off 200.00", () => {
    expect(applyDiscount(200, 15)).toBe(170);
  });

  test("leaves the total alone at 0%", () => {
    expect(applyDiscount(99.99, 0)).toBe(99.99);
  });
});

describe("withTax", () => {
  test("adds 20% by default", () => {
    expect(withTax(100)).toBe(120);
  });
});
