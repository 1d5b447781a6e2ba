"""The reference trainers' published checkpoints (MMKE-Bench, VLKEB: MEND, KE, SERAC), read as
mmke-eval editor checkpoints: ``safe_pickle`` reads their ``torch.save`` files without running
code, ``weights`` matches their weight names to the adapter's, ``convert`` hands a file to the
editor that owns its format (each editor's ``from_reference``; docs/editors.md, "Loading the
published checkpoints")."""
