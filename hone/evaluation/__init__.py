"""Evaluation: lm-eval tasks, the holdout task on the eval split, and the base-vs-tuned comparison."""
from hone.evaluation.run import EvalResult, evaluate, run_evaluation

__all__ = ["EvalResult", "evaluate", "run_evaluation"]
