"""``tregpd models``: list the model structures with their equations and parameters."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model structures (equations, parameters, hypotheses)",
                       description="List the model structures that --model and scenario files can select, "
                                   "with their equations (generated from the declarations).")
    p.add_argument("name", nargs="?", default=None, help="show only this structure")
    p.add_argument("--brief", action="store_true", help="one line per structure")
    p.set_defaults(func=run)


README_BEGIN = "<!-- models:begin -->"
README_END = "<!-- models:end -->"


def readme_block(model=None) -> str:
    """The generated equation listing of a structure, as it appears in README.md."""
    from .structures import get_model
    return get_model(model).equations_markdown().strip()


def update_readme(path) -> bool:
    """Rewrite the block between README_BEGIN and README_END with :func:`readme_block`; True if changed."""
    from pathlib import Path
    text = Path(path).read_text()
    a = text.index(README_BEGIN) + len(README_BEGIN)
    b = text.index(README_END)
    new = text[:a] + "\n" + readme_block() + "\n" + text[b:]
    if new != text:
        Path(path).write_text(new)
    return new != text


def run(args: argparse.Namespace) -> int:
    from .structures import DEFAULT_MODEL, get_model, models
    chosen = [get_model(args.name)] if args.name else list(models().values())
    for m in chosen:
        if args.brief:
            flag = " (default)" if m.name == DEFAULT_MODEL else ""
            print(f"{m.name}{flag}: {len(m.states)} states, {len(m.parameters)} parameters; "
                  f"{m.description.split('.')[0]}")
        else:
            print(m.equations_markdown())
    return 0


def add_model_option(parser, overrides: str = "") -> None:
    """Add ``--model NAME`` (a model structure, ``tregpd models --brief``) to a command's parser.

    The default is None (the default structure, or what a scenario file says); the name is checked when the
    command runs (an unknown name is one line listing the known ones), so building the parser imports nothing
    heavy."""
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="model structure to simulate (see 'tregpd models --brief'; default: the default "
                             f"structure{overrides})")


def check_model(name):
    """The model structure ``name`` (None: the default); an unknown name raises a TregpdError listing the known
    structures."""
    from .structures import get_model
    return get_model(name)
