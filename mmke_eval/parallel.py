"""Several processes (data parallel): whole edit cases per process, numbers identical to one process.

lmms-eval shards a task's documents by position: document i goes to rank ``i % world_size``
(``utils.create_iterator``, in ``build_all_requests`` and in the evaluator's ``doc_iterator``).
A probe is one document, so a plain split would give parts of an edit case to several
processes, each of which would have to make the same edit. Instead the task hook
``process_docs`` (which runs identically on every rank, after the model is built) calls
``order_for_ranks``: whole cases (or, with ``user_number=N``, whole groups of N consecutive
cases) are given to ranks, balanced by probe count, and the ranks' lists are interleaved so that
lmms-eval's ``i % world_size`` hands each rank exactly its own list. Ranks whose list is shorter
are filled up with *padding documents* (copies of one of their probes with ``padding: true``
and a ``padding/...`` case id): the ``edited`` model answers them without editing, as unscored,
and the task's ``process_results`` leaves them out of every column. After the run, rank 0
gathers the per-document scores; a task's number is a mean over cases (``metrics.case_mean``,
order-independent), so it equals the one-process number.

Sequential editing (``sequential=true``) and lifelong editing (``lifelong=T``) pile the edits of a
whole task up in order, which no split among processes can reproduce: they are refused in several
processes (``refusal``).

The launcher sets ``WORLD_SIZE`` and ``RANK`` (torchrun, ``accelerate launch``); nothing here
needs torch.distributed.
"""

from __future__ import annotations

import os
from collections import OrderedDict

PADDING_FIELD = "padding"  # ProbeDoc field: a filler document of a multi-process run
PADDING_PREFIX = "padding/"  # its case id: padding/rank<r>/<k>

SEQUENTIAL_REFUSED = (
    "sequential=true cannot run in several processes ({world} here): sequential edits pile up over a whole task in "
    "order, so one process must make them all. Run it in one process (without torchrun / accelerate launch), or "
    "run the tasks of a group as separate one-process runs side by side"
)

LIFELONG_REFUSED = (
    "lifelong={edits} cannot run in several processes ({world} here): a lifelong stream is sequential, each edit made on "
    "the model every earlier edit of the task left, so one process must make them all. Run it in one process (without "
    "torchrun / accelerate launch)"
)


def refusal(protocol, world_size: int) -> str | None:
    """Why ``protocol`` cannot run in ``world_size`` processes, or None when it can."""
    if world_size <= 1:
        return None
    if protocol.lifelong:
        return LIFELONG_REFUSED.format(edits=protocol.lifelong, world=world_size)
    if protocol.sequential:
        return SEQUENTIAL_REFUSED.format(world=world_size)
    return None


def world() -> tuple[int, int]:
    """(rank, world size) as the launcher set them; (0, 1) in a plain process."""
    return _env_int("RANK", 0), max(_env_int("WORLD_SIZE", 1), 1)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.lstrip("-").isdigit() else default


def is_padding(doc) -> bool:
    return isinstance(doc, dict) and bool(doc.get(PADDING_FIELD))


def assign_units(sizes: list[int], world_size: int) -> list[list[int]]:
    """Which units (by index) each rank gets: largest first, each to the rank with the fewest
    probes so far (then fewest units, then lowest rank); each rank's units in their original order."""
    loads, counts = [0] * world_size, [0] * world_size
    assigned: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], counts[r], r))
        assigned[rank].append(index)
        loads[rank] += sizes[index]
        counts[rank] += 1
    return [sorted(units) for units in assigned]


def order_for_ranks(docs: list[dict], world_size: int, block: int = 1) -> list[dict]:
    """``docs`` reordered (and padded) so that lmms-eval's ``i % world_size`` sharding gives every
    rank whole cases: whole groups of ``block`` consecutive cases, in their original order."""
    if world_size <= 1 or not docs:
        return docs
    by_case: OrderedDict[str, list[dict]] = OrderedDict()
    for doc in docs:
        by_case.setdefault(doc["case_id"], []).append(doc)
    cases = list(by_case.values())
    units = [[doc for case in cases[i : i + block] for doc in case] for i in range(0, len(cases), block)]
    per_rank = [[doc for unit in units_of_rank for doc in units[unit]]
                for units_of_rank in assign_units([len(u) for u in units], world_size)]
    length = max(len(docs_of_rank) for docs_of_rank in per_rank)
    for rank, docs_of_rank in enumerate(per_rank):
        source = docs_of_rank[-1] if docs_of_rank else docs[0]
        docs_of_rank += [{**source, "case_id": f"{PADDING_PREFIX}rank{rank}/{k}", PADDING_FIELD: True}
                         for k in range(length - len(docs_of_rank))]
    return [per_rank[rank][i] for i in range(length) for rank in range(world_size)]


def prepare_backend(base_args: dict, cuda_available: bool | None = None) -> None:
    """Before the backend is built in one of several processes (``base_args`` may be changed):

    * on CPU, set ``ACCELERATE_USE_CPU``: under torchrun, accelerate otherwise sees one process
      (DistributedType.NO) and lmms-eval's evaluator, which counts every rank's requests through
      the model's accelerator, fails (``'int' object is not iterable``); a launcher's own setting
      (accelerate launch sets it) is kept;
    * on GPUs, ``device=cuda`` / ``device_map=cuda`` (no index) become this process's GPU,
      ``cuda:<LOCAL_RANK>``: one model per GPU;
    * ``device_map=auto`` is refused: every process would spread its model over every GPU (and
      lmms-eval 0.7.3's llava_hf moves a multi-process model to one device anyway).
    """
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    values = {key: str(base_args.get(key, "")).strip().lower() for key in ("device", "device_map")}
    if values["device_map"] == "auto":
        raise ValueError(
            "device_map=auto cannot be used in several processes: each process would spread its model over every GPU. "
            "For a model larger than one GPU run one process with device_map=auto (docs/multi-process.md); with "
            "several processes, give each one GPU (leave device and device_map out, or device=cuda)"
        )
    if not cuda_available or any(value.startswith("cpu") for value in values.values()):
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        return
    local_rank = _env_int("LOCAL_RANK", 0)
    for key, value in values.items():
        if value == "cuda":
            base_args[key] = f"cuda:{local_rank}"


def accelerate_cpu_warning() -> str | None:
    """``accelerate launch --cpu --num_processes N`` starts ONE process (accelerate runs several
    CPU processes only through mpirun): say so instead of running silently on one."""
    asked = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1", "yes")
    if asked and os.environ.get("MASTER_ADDR") and "WORLD_SIZE" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ \
            and "PMI_SIZE" not in os.environ:
        return ("accelerate launch --cpu started a single process (accelerate starts several CPU processes only "
                "through mpirun); this run is not split. For several CPU processes use "
                "`torchrun --nproc_per_node N -m mmke_eval.cli ...` (or `-m lmms_eval`)")
    return None
