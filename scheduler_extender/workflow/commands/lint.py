"""`gedge-flow lint FILE...`: validate workflows offline (no cluster): spec, references, runtimes, models."""

from __future__ import annotations

import argparse
from pathlib import Path

from gedge_common.files import FileLoadError, parse_yaml_all, read_bounded
from scheduler_extender.workflow.catalog import CatalogError, load_catalog_file
from scheduler_extender.workflow.commands.run import MAX_FILE_BYTES
from scheduler_extender.workflow.composer import CompositionError
from scheduler_extender.workflow.podspec import check_runtimes
from scheduler_extender.workflow.spec import WorkflowSpecError, api_object, parse_workflow

EPILOG = """examples:
  gedge-flow lint deploy/crds/examples/*.yaml
  gedge-flow lint pipeline.yaml --catalog deploy/runtime-catalog/runtime-catalog.yaml

Exit status: 0 when every workflow is valid, 1 when any is not (one line per
fault: file, workflow, task and field).
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("files", nargs="+", metavar="FILE", help="Workflow YAML (several documents allowed)")
    parser.add_argument(
        "--catalog",
        metavar="FILE",
        help="runtime catalog (YAML or ConfigMap manifest): also check each task's runtime or model",
    )
    parser.set_defaults(run=run)


def lint_text(text: str | bytes, catalog_path: str | None = None) -> tuple[list[str], int]:
    """(problems, workflows checked) for one file's text; each problem names workflow, task and field."""
    catalog = None
    if catalog_path:
        try:
            catalog = load_catalog_file(catalog_path)
        except CatalogError as exc:
            return [f"catalog {exc}"], 0
    try:
        documents = parse_yaml_all(text, source="file", limit=MAX_FILE_BYTES)
    except FileLoadError as exc:
        return [str(exc).removeprefix("file: ")], 0
    if not documents:
        return ["no workflow in the file"], 0
    problems = []
    for index, doc in enumerate(documents):
        try:
            workflow = parse_workflow(api_object(doc))
            if catalog is not None:
                check_runtimes(workflow, catalog)
        except (WorkflowSpecError, CompositionError) as exc:
            prefix = f"document {index + 1}: " if len(documents) > 1 else ""
            problems.append(prefix + str(exc))
    return problems, len(documents)


def run(args: argparse.Namespace) -> int:
    failed = False
    for name in args.files:
        path = Path(name)
        try:
            text = read_bounded(path, limit=MAX_FILE_BYTES)
        except FileLoadError as exc:
            print(exc)
            failed = True
            continue
        problems, count = lint_text(text, args.catalog)
        for problem in problems:
            print(f"{path}: {problem}")
        if problems:
            failed = True
        else:
            print(f"{path}: ok ({count} workflow{'s' if count != 1 else ''})")
    return 1 if failed else 0
