"""The evaluation engine, independent of lmms-eval: case types (cases.py), the evaluator of one
case (evaluator.py: pre-edit outputs, apply, probe, restore), the schedules that order the edits
(schedules.py: independent, user groups, sequential with a gap) and the report of a run merged
across processes (run_report.py). The lmms-eval model (mmke_eval/lmms/model.py) and the direct
scorer (mmke_eval/direct.py) both drive it."""
