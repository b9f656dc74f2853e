"""A small shop's pricing rules."""
