"""AdaRefiner: an adapter LM, refined by the agent's feedback, writes the analysis that a decision model
turns into sub-goals for an RL agent in Crafter (spec: shared/methods/adarefiner.md).

Stages, for iteration i = 1..N (the paper's stages; `iterations` in the recipe):
- `train`: the agent plays (PPO learns; or the scripted player acts, to measure the mechanism), querying
  every `query_interval` steps (`adarefiner_loop`); every query is recorded;
- `sft`: the adapter is fine-tuned on the queries of iterations 1..i but the newest `refine.holdout` share
  (held out, their loss logged; completion-only: the reply is trained, the prompt is context), from the
  starting adapter each time (`refine.start: initial`) or from iteration i-1's refined adapter
  (`previous`, the reference's; a LoRA adapter is merged into its base and a fresh one trained on top):
  `self` on every record (the reference code's self-training), `feedback` on the records whose
  instruction the agent then followed, weighted by that comprehension score (feedlearn's own,
  reward-weighted variant), `frozen` not at all (a baseline);
- `evaluate`: the saved agent and adapter on test worlds, querying every `evaluate.query_interval` steps:
  Crafter score, success per achievement, episode reward, mean comprehension score.
Iteration i+1 starts from the agent of iteration i and the adapter of `sft` i. `warmup` (optional; the offline
recipes') trains the starting adapter on template analyses of states the scripted player meets: a tiny
adapter from scratch, a pretrained one fine-tuned (a fresh LoRA where the recipe has one).
"""
