"""`mmke-eval convert-checkpoint`: a published MEND, KE or SERAC checkpoint of the reference trainers,
as an mmke-eval editor checkpoint.

    mmke-eval convert-checkpoint --editor mend --reference MEND/llava_...-step_5000.pt \\
        --model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float16 --output_path ckpt/mend_mmke
    mmke-eval --editor mend --editor_args checkpoint=ckpt/mend_mmke --model llava_hf ...

The editor named (through registry.yaml) reads the file: mmke_eval/reference/ and each editor's
``from_reference`` (docs/editors.md, "Loading the published checkpoints").
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from mmke_eval.cli.inputs import load_adapter

DESCRIPTION = __doc__.split("\n\n")[0]


def configure(parser: argparse.ArgumentParser) -> None:
    from mmke_eval import runner
    from mmke_eval.reference.convert import convertible_editors

    parser.add_argument("--editor", required=True, help="the editor the file trained: " + ", ".join(convertible_editors()))
    parser.add_argument("--reference", required=True, help="the reference's checkpoint file (.pt from the EasyEdit "
                        "trainer for MEND and SERAC, .ckpt from PyTorch-Lightning for KE)")
    parser.add_argument("--model", default=runner.DEFAULT_MODEL)
    parser.add_argument("--model_args", default=None)
    parser.add_argument("--editor_args", default="", help="k=v,... editor settings, if the reference used others "
                        "than the registry's (they must be passed again when the checkpoint is used)")
    parser.add_argument("--inner_params", default="", help="the reference's edited weight names in its hparams "
                        "order, comma-separated (default: the reference's: the edited layers ascending, modules by name)")
    parser.add_argument("--output_path", required=True, help="checkpoint folder to write")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    from editors.learned import META_FILE
    from mmke_eval import registry
    from mmke_eval.keyvalues import parse_key_values
    from mmke_eval.reference.convert import convert, not_convertible, reference_editor
    from mmke_eval.reference.safe_pickle import ConversionError

    name = reference_editor(args.editor)  # the editor that runs the file (the reference's SERAC: serac_ref)
    if name is None:
        raise ConversionError(not_convertible(args.editor))
    overrides = parse_key_values(args.editor_args, "--editor_args")
    if "checkpoint" in overrides:
        raise ConversionError("--editor_args checkpoint=...: conversion writes a checkpoint (--output_path); it does not read one")
    registry.build_editor(name, overrides=overrides)  # bad values fail before the model loads
    path = Path(args.reference).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--reference {args.reference}: no such file")
    registry.editor_class(name).check_reference(path)  # a wrong file: say so before the model loads
    if (Path(args.output_path).expanduser() / META_FILE).exists():
        raise ConversionError(f"--output_path {args.output_path} already holds a checkpoint ({META_FILE}); choose another "
                              "folder or remove it")
    adapter = load_adapter(args.model, args.model_args)
    editor = registry.build_editor(name, family=adapter.family, overrides=overrides)
    inner = [n.strip() for n in args.inner_params.split(",") if n.strip()] or None
    command = "mmke-eval convert-checkpoint " + " ".join(shlex.quote(a) for a in argv)
    meta = convert(editor, adapter, path, args.output_path, inner_params=inner, command=command)
    print(f"mmke-eval convert-checkpoint: {editor.conversion_summary(meta, path)}; checkpoint in {args.output_path}. "
          f"Use it with --editor {name} --editor_args checkpoint={args.output_path}"
          + (f",{args.editor_args}" if args.editor_args else ""))
    return 0
