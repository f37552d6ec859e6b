"""Evaluate a GLEAM-X model: verdict accuracy/F1, parse rate, BLEU/ROUGE-L, fact faithfulness.

    python jobs/evaluate_explain.py model=runs/gleam-x-local/final data=runs/gleam-x-local/data split=val
    python jobs/evaluate_explain.py model=<base model> adapter=runs/gleam-x-local/adapter data=my_pairs.json
"""

from __future__ import annotations

import sys

from gleam.explain.evaluate import EvaluateExplainConfig, evaluate_model
from gleam.runtime import run_job


def summarize(config: EvaluateExplainConfig, report: dict) -> str:
    from gleam.progress import ending, verdict_table

    return ending(f"Evaluated {config.model} on {report.get('examples')} examples of split '{config.split}'",
                  verdict_table({config.split: report}),
                  f"{report['output']}  (every metric: text, faithfulness, per language and view)", [])


if __name__ == "__main__":
    sys.exit(run_job(EvaluateExplainConfig, evaluate_model, summarize, None, __doc__, None,
                     errors=(ValueError, FileNotFoundError, OSError)))
