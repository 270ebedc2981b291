"""Pipeline-level evaluation: LLM-as-a-judge with repeats, pairwise comparison, MCQ benchmarks, feedback export.

Modules: ``rubrics`` (the editable rubric file), ``io`` (inputs and resumable results), ``parse`` (strict reply
parsing), ``judges`` (OpenAI-compatible judge), ``local`` (local-model judge and scorer, G-Eval expectation),
``runner`` (``eval judge``), ``compare`` (``eval compare``), ``mcq`` (``eval mcq``), ``feedback``
(``eval export-feedback``), ``cli`` (argparse wiring for ``ghostbot eval``).
"""
