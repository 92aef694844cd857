"""RISE: recursive introspection. A model learns to improve its own answer over several turns.

Stages (spec: shared/methods/rise.md):
- `sft`: optional warm start on the problems' worked solutions (needed by tiny models built from scratch);
- `collect`: multi-turn rollouts; each turn samples n actions from its model (the policy or a teacher),
  keeps the first best one, and stops at success;
- `convert`: trajectories -> weighted SFT examples (criteria all / better / best / success);
- `train`: reward-weighted regression on the final assistant turn of each example;
- `evaluate`: T sequential turns without an oracle, and n parallel first-turn samples.
Each stage reads the previous stage's files in the run folder, so any of them can be rerun or resumed.
"""
