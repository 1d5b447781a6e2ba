"""Knowledge editors. Each one edits a model through a ModelAdapter and restores it exactly."""
