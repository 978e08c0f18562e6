"""Per-method evaluation, one module per method family.

- `reward`: reward models (`rl: reward`): held-out pairwise accuracy (chosen scored above rejected) and margin.
"""
