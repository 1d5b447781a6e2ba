"""What several subcommands read the same way: the model (--model, --model_args, as an adapter)
and the bootstrap's options (report --ci, compare)."""

from __future__ import annotations

import argparse


def load_adapter(model: str, model_args: str | None, world: str = "base"):
    """The adapter over a loaded lmms-eval backend, as the ``edited`` model builds it (the built-in
    default: the shipped model of ``world``, runner.built_in_world)."""
    from lmms_eval.models import get_model

    from mmke_eval import registry, runner
    from mmke_eval.keyvalues import parse_key_values
    from mmke_eval.protocol import check_device_map, check_gpu, check_pretrained

    args = parse_key_values(runner.model_args_for(model, model_args, world), "--model_args")
    adapter_args = {k[len("adapter."):]: v for k, v in args.items() if k.startswith("adapter.")}
    base_args = {k: v for k, v in args.items() if not k.startswith("adapter.")}
    adapter_cls = registry.adapter_class(model)
    adapter_cls.check_backend(model)
    check_pretrained(base_args.get("pretrained"))
    backend_cls = get_model(model, force_simple=True)
    check_gpu(backend_cls, base_args)
    check_device_map(backend_cls, base_args)
    base = backend_cls(**base_args)
    return adapter_cls.from_lmms(base, **adapter_args)


def bootstrap_options(parser: argparse.ArgumentParser) -> None:
    from mmke_eval.report.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED

    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help="bootstrap resamples of the cases (default: %(default)s; at least 100)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap (default: %(default)s)")


def bootstrap(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The bootstrap of --resamples and --seed; a bad value is the parser's usage error."""
    from mmke_eval.report.bootstrap import Bootstrap

    try:
        return Bootstrap(args.resamples, args.seed)
    except ValueError as err:
        parser.error(str(err))
