"""lmms-eval task definitions (YAML + hooks). Loaded by lmms-eval through --include_path."""
