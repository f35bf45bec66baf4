"""The mesh planning toolkit (SPEC section 7): pure functions behind thin commands."""
