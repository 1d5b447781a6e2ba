"""CCKEB: one benchmark family in one folder (README.md)."""
