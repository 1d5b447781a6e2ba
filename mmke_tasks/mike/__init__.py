"""The mike benchmark family: declaration (family.yaml), loader, task YAMLs, mini generator, test fixture (README.md)."""
