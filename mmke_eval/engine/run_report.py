"""The report of a run merged across processes (several processes each edit their own cases)."""

from __future__ import annotations

import json
from typing import Any


def merge_protocols(protocols: list[dict], stats: list[dict[str, list]], editor=None) -> dict[str, Any]:
    """One process's protocol record (the first that edited or resumed a case, else process 0's)
    with every process's cases added up."""

    def worked(protocol: dict) -> bool:
        parallel_run = protocol.get("data_parallel") or {}
        return any(parallel_run.get("edited_cases", {}).values()) or any(parallel_run.get("resumed_cases", {}).values())

    merged = json.loads(json.dumps(next((p for p in protocols if worked(p)), protocols[0])))
    labels = list(dict.fromkeys(label for per_rank in stats for label in per_rank))
    if editor is not None:
        merged["editor_report"] = {label: editor.summarize([s for per_rank in stats for s in per_rank.get(label, [])])
                                   for label in labels}
    resumed: dict[str, int] = {}
    for protocol in protocols:
        for label, n in ((protocol.get("resume") or {}).get("resumed_cases") or {}).items():
            resumed[label] = resumed.get(label, 0) + n
    merged.setdefault("resume", {})["resumed_cases"] = resumed
    if any("repaired_lines" in (protocol.get("resume") or {}) for protocol in protocols):  # whichever process opened it first repaired it
        merged["resume"]["repaired_lines"] = sum((protocol.get("resume") or {}).get("repaired_lines", 0) for protocol in protocols)
    for key in ("unscored_cases", "edit_only_cases"):
        if key in merged.get("protocol", {}):
            total: dict[str, int] = {}
            for protocol in protocols:
                for label, n in (protocol.get("protocol", {}).get(key) or {}).items():
                    total[label] = total.get(label, 0) + n
            merged["protocol"][key] = total
    ranks = [dict(p.get("data_parallel") or {}) for p in protocols]
    padding: dict[str, list[int]] = {}
    for entry in ranks:
        entry["cases"] = {label: len(ids) for label, ids in entry.get("edited_cases", {}).items()}
        for task, ids in entry.pop("padding_doc_ids", {}).items():
            padding.setdefault(task, []).extend(ids)
    merged["data_parallel"] = {"world_size": len(protocols), "ranks": ranks,
                               "padding_docs": {task: len(ids) for task, ids in padding.items()},
                               "_padding_doc_ids": padding}  # for the runner, which drops them from the samples
    return merged
