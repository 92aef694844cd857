"""Reflect-RL: a reflection model writes a short analysis of each state; a policy model reads it and
picks one of the labelled actions; the policy is then trained online with RL
(spec: shared/methods/reflect-rl.md). Environments (`env.name`): DangerousTaxi, AutoExplore, ALFWorld,
TextWorld, any gymnasium text environment.

Stages:
- `sft`: teacher trajectories (oracle actions, random steps and recovery steps, with template reflections
  or reflections written by a teacher model) train the reflection model (state -> analysis) and the
  policy (state + analysis + choices -> label, a softmax over the offered labels only);
- `rl`: REINFORCE on the undiscounted cost-to-go (or PPO with a critic head), one update per batch of
  episodes, plus one on successful episodes drawn from a small replay buffer; an optional curriculum
  (the buffer is emptied at each new level);
- `evaluate`: success rate and mean cost per level over test episodes, greedy, with and without
  reflection, and sampled as the reference evaluates;
- `evaluate-remote`: the same test episodes played by a chat model through a backend, for comparison.
Without `reflection`, the same stages train and run the policy on the state and choices alone.
"""
