"""``mmke-eval`` as a test sees it in one process of a (multi-process) run.

    torchrun --standalone --nproc_per_node 2 -m mmke_eval.testing.dp_worker REPORT_DIR -- <mmke-eval arguments>

Runs ``mmke_eval.cli.main`` unchanged, and records what the test cannot read from the results:
every edit this process applied (the case id of each request handed to the editor) and whether
the model's weights are bit-identical to how they were loaded once the run is over. Writes
``REPORT_DIR/rank<R>.json`` and exits with the CLI's exit code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    report_dir, rest = Path(argv[0]), argv[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    from mmke_eval import cli
    from mmke_eval.engine.evaluator import CaseEvaluator

    applied: list[str] = []
    loaded: list[dict] = []
    evaluators: list = []  # the last one built holds the run's adapter
    apply_all, init = CaseEvaluator._apply_all, CaseEvaluator.__init__

    def counting_apply_all(self, requests, handles):
        applied.extend(request.case_id for request in requests)
        return apply_all(self, requests, handles)

    def remembering_init(self, adapter, *args, **kwargs):
        init(self, adapter, *args, **kwargs)
        evaluators.append(self)
        loaded.append({name: t.detach().clone() for name, t in adapter.model.state_dict().items()})

    CaseEvaluator._apply_all = counting_apply_all
    CaseEvaluator.__init__ = remembering_init
    code = cli.main(rest)
    restored = None
    if loaded and evaluators:
        import torch

        now = evaluators[-1].adapter.model.state_dict()
        restored = set(now) == set(loaded[-1]) and all(torch.equal(now[k], loaded[-1][k]) for k in now)
    rank = int(os.environ.get("RANK", "0"))
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "exit": code, "applied": applied, "restored": restored}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
