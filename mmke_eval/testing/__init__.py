"""Small offline builders (a tiny LLaVA, a tiny MMKE-format data set) for tests and smoke runs."""
