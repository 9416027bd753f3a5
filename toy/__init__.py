"""What serves only the demo (`python demo.py`) and the replication (`python -m toy.replicate`): the built-in
task, the tiny model builder, the seeded comparison, its job launcher and the dynamics plot."""
