"""wtmesh: run a plan of coding units in parallel, one git worktree per unit, and land
their changes through a single integrator that proves every step."""

__version__ = "0.1.0"
