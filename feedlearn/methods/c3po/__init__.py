"""C3PO: learn one sentence of verbal feedback where it applies, and change nothing elsewhere
(spec: shared/methods/c3po.md).

Stages, per selected feedback, in `<run>/<feedback short id>/`:
- `sample`: a teacher proposes categories and in-scope / near-scope prompts; out-of-scope prompts come from
  a general prompt file. The base policy answers every prompt (baseline), and in context of the feedback
  (in-context, CoT) on the test split; the policy itself or the teacher (`sample.reviser`) revises the
  in-scope training baselines (revised). Resumable.
- `train`: one LoRA adapter per method: C3PO (DPO in scope + anchors near and out of scope), SCD,
  SCD + negatives, DPO.
- `combine`: one adapter from the C3PO adapters of all selected feedbacks (part of `run` when there are
  several).
- `evaluate`: per scope, the share of responses that follow the feedback (in scope) and that changed
  versus the baseline (near and out of scope), with the feedback's metric, or a Likert judge for
  qualitative feedback; every row (adapters, in-context and CoT from their samples, the base model as
  `base`) against the same baseline (`evaluate.baseline`); optionally the judge's answer quality; the
  combined adapter, once there, is scored on each feedback as `combined`.
An optional `sft` stage first teaches a tiny model the synthetic instruction corpus (offline runs).
"""
