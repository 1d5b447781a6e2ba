"""mmke-eval: knowledge-editing benchmarks for large multimodal models, as lmms-eval tasks."""

__version__ = "0.1.0"
