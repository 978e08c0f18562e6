"""Per-method evaluation, one module per method family; `newt.evaluate.evaluators()` is the table that picks one.

- `preference`: DPO / IPO / KTO and the reference-free ORPO / SimPO / CPO: preference accuracy and reward margin
  from each variant's log-probabilities of the held-out chosen and rejected completions;
- `grpo`: the recipe's own reward functions on greedy generations for held-out prompts.
- `reward`: reward models (`rl: reward`): held-out pairwise accuracy (chosen scored above rejected) and margin.
"""
