"""The `feedlearn` command line: run recipes, single stages, the offline demo, and reports."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.resources import files
from pathlib import Path

from feedlearn.config import load_recipe, read_yaml, validate
from feedlearn.data.jsonl import write_text_atomic
from feedlearn.data.store import EVALUATED, open_run, write_problem, writing
from feedlearn.errors import ConfigError, FeedlearnError
from feedlearn.methods.layout import Layout
from feedlearn.methods.registry import METHODS, MethodInfo, method_info
from feedlearn.processes import end_processes, process_state
from feedlearn.serve import ServeSettings, serve


def load_method(recipe: str, overrides: list[str]):
    """(config, method info) of a recipe, chosen by its `method` key."""
    info = method_info(read_yaml(recipe).get("method"), recipe)
    return load_recipe(info.config, recipe, overrides), info


def open_recipe_run(args, config):
    """The run folder: `--run-id`, or `<method>-<recipe file name>` (recipes of different methods share
    names such as tiny.yaml)."""
    run_id = args.run_id or f"{config.method}-{Path(args.recipe).stem}"
    return open_run(config.run_dir, run_id, config.model_dump(mode="json"))


def cmd_run(args) -> None:
    config, info = load_method(args.recipe, args.set)
    store = open_recipe_run(args, config)
    with writing(store.path):
        info.method(config, store).run()
    if process_state().is_main_process:
        print(f"run folder: {store.path}")


def cmd_stage(args) -> None:
    config, info = load_method(args.recipe, args.set)
    if args.stage not in info.stages:
        raise ConfigError(f"unknown stage '{args.stage}' (choose from {', '.join(info.stages)})")
    store = open_recipe_run(args, config)
    method = info.method(config, store)
    stage = getattr(method, args.stage.replace("-", "_"))
    iterated = args.stage in info.iterated
    with writing(store.path):
        result = stage(args.iteration) if iterated else stage()
    if not process_state().is_main_process:  # the main process reports, as it alone writes
        return
    if isinstance(result, dict) and all(isinstance(v, Path) for v in result.values()):
        for name, path in result.items():  # the models a stage saved, by name
            print(f"{name}: {path}")
    elif isinstance(result, dict):
        from feedlearn.report import print_results

        print_results(
            f"{args.stage}, iteration {args.iteration}" if iterated else args.stage, store.run_id, result
        )
    else:
        print(result)


def cmd_recipe(args) -> None:
    from feedlearn.recipe_docs import annotated_yaml

    if args.action == "show":
        config, _ = load_method(args.target, args.set)
        print(f"# {args.target}, resolved; '# *' marks what the recipe or --set gave", end="\n\n")
        print(annotated_yaml(config, mark_changes=True), end="")
        return
    if args.target not in METHODS:
        raise ConfigError(f"unknown method '{args.target}' (choose from {', '.join(METHODS)})")
    starter = files("feedlearn") / "recipes" / args.target / "tiny.yaml"
    config, _ = load_method(str(starter), args.set)
    text = (
        f"# A {args.target} recipe: every setting, with what it does and its default (the values are those\n"
        f"# of recipes/{args.target}/tiny.yaml, which runs offline on a CPU). Run it with:\n"
        f"#   feedlearn run THIS_FILE.yaml\n\n" + annotated_yaml(config, mark_changes=False)
    )
    if args.out:
        out = Path(args.out)
        if out.is_dir() or not out.parent.is_dir():
            where = "is a folder" if out.is_dir() else f"is in a folder that does not exist ({out.parent})"
            raise ConfigError(f"--out {out} {where}: name a file to write")
        if out.exists() and not args.force:
            raise ConfigError(f"--out {out} exists: pass --force to overwrite it")
        write_text_atomic(out, text)
        print(f"wrote {out}")
    else:
        print(text, end="")


def cmd_serve(args) -> None:
    given = {f: getattr(args, f) for f in ServeSettings.model_fields if getattr(args, f) is not None}
    serve(args.target, validate(ServeSettings, given, "serve"))


def cmd_demo(args) -> None:
    from feedlearn.demo import run_demo

    with writing(Path(args.out)):
        run_demo(Path(args.out), args.set)


def cmd_report(args) -> None:
    from feedlearn.data.store import flatten
    from feedlearn.report import print_results
    from feedlearn.report_page import write_comparison, write_report

    runs = [Path(r) for r in args.run]
    methods = {run: _run_method(run) for run in runs}
    results = {run: _evaluation_results(methods[run][1]) for run in runs}
    flat = {}
    for run in runs:
        prefix = f"{run.name}/" if len(runs) > 1 else ""
        flat.update({prefix + column: values for column, values in results[run].items()})
    print_results(f"run {', '.join(r.name for r in runs)}", runs[0].name, flat)
    for run in runs:
        columns = {column: flatten(values) for column, values in results[run].items()}
        figure = methods[run][0].figure(columns, run, run / "report")
        print(f"report: {write_report(run, columns, [figure])}")
    if len(runs) > 1:
        print(f"comparison: {write_comparison(runs, {k: flatten(v) for k, v in flat.items()})}")


def _evaluation_results(layout: Layout) -> dict[str, dict]:
    """A run's evaluation results by column (its layout's `evaluations`)."""
    layout.check_moved()
    found = layout.evaluations()
    if not found:
        raise FeedlearnError(
            f"{layout.root}: no evaluation results (evaluate/**/metrics.json) in this run folder"
        )
    results = {}
    for column, folder in found.items():
        path = folder / EVALUATED
        try:
            results[column] = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FeedlearnError(
                f"{path}: not valid JSON ({e}): delete it and run that evaluate stage again"
            ) from None
    return results


def _run_method(run: Path) -> tuple[MethodInfo, Layout]:
    """The method of a run folder (its saved config's `method`) and the folder's layout."""
    config = run / "config.yaml"
    if not config.exists():
        raise FeedlearnError(f"{run} is not a run folder (it has no config.yaml)")
    name = read_yaml(config).get("method")
    info = method_info(name, str(config))
    return info, info.layout(run, name)


def _recipes_listing() -> str:
    """The shipped recipes, by method, for `feedlearn --help`."""
    root = files("feedlearn") / "recipes"
    lines = [
        f"  {method:<12} "
        + ", ".join(sorted(f.name for f in (root / method).iterdir() if f.name.endswith(".yaml")))
        for method in METHODS
    ]
    return (
        "shipped recipes (feedlearn/recipes/<method>/; `feedlearn recipe new METHOD` writes one):\n"
        + "\n".join(lines)
        + "\n\nEach command's --help lists its stages and options."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedlearn",
        description="Teach language models from feedback.",
        epilog=_recipes_listing(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_args(p):
        p.add_argument("recipe", help="a YAML recipe")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
        p.add_argument("--run-id", help="name of the run folder (default: METHOD-RECIPE_NAME)")

    run = sub.add_parser("run", help="run every stage of a recipe")
    recipe_args(run)
    run.set_defaults(func=cmd_run)

    for name, info in METHODS.items():
        listing = "\n".join(f"  {stage:<16} {does}" for stage, does in info.stages.items())
        p = sub.add_parser(
            name,
            help=f"run one stage of {name}",
            description=f"Run one stage of {name}; `feedlearn run` runs them in order.\n\nstages:\n{listing}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("stage", choices=info.stages, help="the stage to run (listed above)")
        recipe_args(p)
        if info.iterated:
            p.add_argument("--iteration", type=int, default=1, help=info.iteration_help)
        p.set_defaults(func=cmd_stage)

    demo = sub.add_parser("demo", help="RISE end to end on a tiny offline model (7-10 minutes on a CPU)")
    demo.add_argument("--out", default="demo_out", help="folder for summary.json, turns.png and the run")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    demo.set_defaults(func=cmd_demo)

    report = sub.add_parser("report", help="print the evaluation table of run folders (side by side)")
    report.add_argument("run", nargs="+", help="run folders, e.g. runs/rise-tiny")
    report.set_defaults(func=cmd_report)

    recipe = sub.add_parser("recipe", help="explain a recipe (show), or write a commented one (new)")
    recipe.add_argument("action", choices=["show", "new"])
    recipe.add_argument("target", help="show: a recipe file; new: a method (" + ", ".join(METHODS) + ")")
    recipe.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    recipe.add_argument("--out", help="new: the file to write (default: print it)")
    recipe.add_argument("--force", action="store_true", help="new: overwrite the --out file if it exists")
    recipe.set_defaults(func=cmd_recipe)

    serve = sub.add_parser(
        "serve", help="serve a run's trained policy (or a model folder) over an OpenAI API"
    )
    serve.add_argument("target", help="a run folder, or a model / LoRA adapter folder")
    for field, info in ServeSettings.model_fields.items():
        flag = "--" + field.replace("_", "-")
        kind = info.annotation if info.annotation in (int, str) else None
        choices = ["auto", "local", "vllm"] if field == "engine" else None
        serve.add_argument(
            flag, type=kind, choices=choices, help=f"{info.description} (default: {info.default})"
        )
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("feedlearn").setLevel(logging.INFO)
    finished = False
    try:
        args.func(args)
        finished = True
    except FeedlearnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # before a run folder exists: a cache or run_dir that cannot be written
        problem = write_problem(Path("."), e)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    finally:
        end_processes(wait=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
