"""mmke-eval: knowledge-editing benchmarks for large multimodal models, as lmms-eval tasks."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``mmke_eval.evaluate`` without importing lmms-eval and torch on ``import mmke_eval``.
    if name == "evaluate":
        from mmke_eval.api import evaluate

        return evaluate
    raise AttributeError(f"module 'mmke_eval' has no attribute {name!r}")
