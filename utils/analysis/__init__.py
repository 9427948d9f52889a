"""The analysis of a model's predictions (analyze.py): where it fails, how well its probabilities are
calibrated, and how runs compare. The page itself is written by logger/report/."""
