"""DPO and Active DPO: preference learning from labeled pairs, or from labels asked for only where the
policy is unsure (spec: shared/methods/active-dpo.md).

Stages:
- `train`: DPO (sigmoid, IPO or hinge) against a frozen reference. Every label comes through a labeler
  (the dataset's own labels, an LLM judge, a human) with a budget and a cache in the run folder, so a
  label is paid for once and `queries_used` is exact across epochs and restarts. Plain DPO asks about
  every pair; Active DPO asks only where |m| <= gamma, m being the implicit reward margin, and for the
  other pairs trusts the policy's own sign(m) ("flip") or skips them ("drop").
- `evaluate`: held-out preference accuracy against the gold labels; it never queries the labeler.
"""
