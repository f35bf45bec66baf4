"""Several proposals per unit, critics and a vote (SPEC 12)."""
