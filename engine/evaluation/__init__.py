"""Evaluation: answering prompts and judging the answers. Import from the modules.

    engine.evaluation.evaluate   base vs tuned on held-out prompts (evaluate_run), eval.json
    engine.evaluation.metrics    exact match, token F1, ROUGE-L, chrF, BLEU, bootstrap intervals
    engine.evaluation.generate   chat with a base or tuned model, streaming (stream_chat)

Use from Python:
    from engine.evaluation.evaluate import evaluate_run
    report = evaluate_run("studio-data/jobs/7", log=print)
"""
