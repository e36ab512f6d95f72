"""The layering that chatcli's module docstrings claim, checked on its import graph.

Every module under chatcli/ is parsed with `ast`, never imported. Every import
statement counts: at module level, inside functions (chatcli imports heavy things
lazily, so most of its imports are there) and under `if TYPE_CHECKING:`.
`from chatcli import paths` counts as importing `chatcli.paths`.

`RULES` is the table of contracts. Each row says which modules it covers (a dotted
name covers the module or package and everything under it) and either what they may
`never` import, or the `only` parts of chatcli they may import from (imports from
outside chatcli are not limited by `only`). A rule with `eager=True` counts only the
imports that run when the module itself is imported (not those in functions or under
`if TYPE_CHECKING:`). A failure names the importing module, its line, the imported
module and the rule it breaks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "chatcli"

# How tokens are chosen: the strategies and what they are built from.
TOKEN_CHOICE = (
    "chatcli.decoding.greedy", "chatcli.decoding.sampling", "chatcli.decoding.beam",
    "chatcli.decoding.beam_strategy", "chatcli.decoding.filters",
    "chatcli.decoding.processors", "chatcli.decoding.loop",
)
TERMINAL = ("rich", "prompt_toolkit", "typer", "chatcli.ui")
HTTP = ("http", "urllib.request", "socket")  # parsing a URL (urllib.parse) is not HTTP


@dataclass(frozen=True)
class Rule:
    """One contract: `scope` (minus `exempt`) imports nothing in `never`, and from
    chatcli only what is under `only` (when given)."""

    text: str
    scope: tuple[str, ...]
    never: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    exempt: tuple[str, ...] = ()
    eager: bool = False


RULES = [
    # The foundations: everything builds on them, they build on (almost) nothing.
    Rule("errors.py imports nothing from chatcli",
         ("chatcli.errors",), only=()),
    Rule("progress.py imports nothing from chatcli",
         ("chatcli.progress",), only=()),
    Rule("conversation.py and paths.py know nothing about tokens, models or storage",
         ("chatcli.conversation", "chatcli.paths"), only=("chatcli.errors",)),
    Rule("context.py and prompt.py know nothing about tokenizers, models, decoding, "
         "the terminal or storage",
         ("chatcli.context", "chatcli.prompt"),
         only=("chatcli.conversation", "chatcli.errors")),
    Rule("interrupts.py knows nothing about chat or the terminal",
         ("chatcli.interrupts",), only=("chatcli.errors",)),
    Rule("store.py knows nothing about models, tokens or the terminal",
         ("chatcli.store",), only=("chatcli.conversation", "chatcli.errors", "chatcli.paths")),
    Rule("transcript.py knows nothing about SQLite, models or the terminal",
         ("chatcli.transcript",),
         never=("sqlite3", "chatcli.lm", "chatcli.loader", "chatcli.remote", *TERMINAL)),
    # Models on disk and in memory.
    Rule("runtime.py knows nothing about models.toml files or tokenizers",
         ("chatcli.runtime",), only=("chatcli.errors",),
         never=("tomllib", "tokenizers", "transformers")),
    Rule("registry.py knows nothing about torch, downloads, caches or HTTP",
         ("chatcli.registry",),
         never=("torch", "transformers", "huggingface_hub", *HTTP, "chatcli.sources",
                "chatcli.loader", "chatcli.lm", "chatcli.remote")),
    Rule("sources.py only deals in files: it knows nothing about torch or tokenizers",
         ("chatcli.sources",),
         never=("torch", "transformers", "tokenizers", "chatcli.lm", "chatcli.loader")),
    Rule("loader.py knows nothing about prompts, decoding or the terminal",
         ("chatcli.loader",),
         never=("chatcli.prompt", "chatcli.decoding", "chatcli.generation", "chatcli.chat",
                "chatcli.cli", *TERMINAL)),
    Rule("lm/ knows nothing about decoding, history, checkpoints on disk or the terminal: "
         "it imports only lm/, errors.py and progress.py",
         ("chatcli.lm",), only=("chatcli.lm", "chatcli.errors", "chatcli.progress")),
    Rule("lm/'s language models know nothing about tokenization",
         ("chatcli.lm",), exempt=("chatcli.lm.tokenizer",),
         never=("chatcli.lm.tokenizer", "tokenizers", "jinja2")),
    Rule("lm/tokenizer.py knows nothing about models and never imports transformers",
         ("chatcli.lm.tokenizer",), only=("chatcli.errors",),
         never=("torch", "transformers")),
    Rule("lm/llama.py never imports transformers",
         ("chatcli.lm.llama",), never=("transformers",)),
    Rule("lm/models/ (the architecture registry) only parses configs: no torch, no "
         "transformers, nothing of chatcli but lm/models/ and errors.py",
         ("chatcli.lm.models",), only=("chatcli.lm.models", "chatcli.errors"),
         never=("torch", "transformers")),
    # Decoding and generation.
    Rule("decoding/ knows nothing about tokenization, text, the terminal, the CLI, chat, "
         "remote servers or history: it imports only decoding/, errors.py and the "
         "LanguageModel interface",
         ("chatcli.decoding",),
         only=("chatcli.decoding", "chatcli.errors", "chatcli.lm.base"),
         never=("tokenizers", "transformers", *TERMINAL)),
    Rule("generation/ knows nothing about the terminal, the CLI, chat or history",
         ("chatcli.generation",),
         never=("chatcli.cli", "chatcli.chat", "chatcli.store", "chatcli.transcript",
                *TERMINAL)),
    Rule("generation/prompt_cache.py knows nothing about conversations, text or decoding "
         "strategies",
         ("chatcli.generation.prompt_cache",),
         never=("chatcli.conversation", "chatcli.prompt", "chatcli.decoding",
                "chatcli.lm.tokenizer")),
    # Remote servers.
    Rule("remote/ imports no torch and knows nothing about the terminal, the CLI, chat "
         "or history",
         ("chatcli.remote",),
         never=("torch", "chatcli.cli", "chatcli.chat", "chatcli.store", *TERMINAL)),
    Rule("remote/client.py knows nothing about decoding settings or conversations",
         ("chatcli.remote.client",),
         never=("chatcli.decoding", "chatcli.conversation", "chatcli.remote.params")),
    Rule("remote/params.py knows nothing about HTTP",
         ("chatcli.remote.params",),
         never=(*HTTP, "chatcli.remote.client", "chatcli.remote.sse")),
    Rule("remote/shape.py knows nothing about HTTP or SSE",
         ("chatcli.remote.shape",),
         never=(*HTTP, "chatcli.remote.client", "chatcli.remote.sse")),
    Rule("remote/sse.py knows nothing about HTTP, JSON or chat completions",
         ("chatcli.remote.sse",),
         never=(*HTTP, "json", "chatcli.remote.client", "chatcli.remote.shape",
                "chatcli.remote.params")),
    # Backends: the one interface answers come through.
    Rule("backends/ know nothing about the terminal, the CLI or chat",
         ("chatcli.backends",), never=("chatcli.cli", "chatcli.chat", *TERMINAL)),
    Rule("backends/base.py knows no particular backend: no server, no weights, no torch",
         ("chatcli.backends.base",),
         never=("chatcli.backends.local", "chatcli.backends.openai", "chatcli.remote",
                "chatcli.loader", "chatcli.lm", "torch", "transformers")),
    Rule("the CLI and chat reach weights and servers only through a backend",
         ("chatcli.cli", "chatcli.chat"),
         never=("chatcli.remote", "chatcli.loader", "chatcli.sources", "chatcli.lm",
                "chatcli.generation.prompt_cache", "chatcli.backends.local")),
    # The terminal, chat and the command line.
    Rule("ui/ is the terminal only (no torch, nothing about models, decoding or chat): "
         "it imports only ui/, errors.py and paths.py",
         ("chatcli.ui",), only=("chatcli.ui", "chatcli.errors", "chatcli.paths"),
         never=("torch", "transformers", "tokenizers")),
    Rule("explain.py knows nothing about the terminal",
         ("chatcli.explain",), never=("chatcli.cli", *TERMINAL)),
    Rule("chat/session.py knows nothing about the terminal",
         ("chatcli.chat.session",), never=TERMINAL),
    Rule("chat/recorder.py knows nothing about models or the terminal",
         ("chatcli.chat.recorder",),
         never=("chatcli.lm", "chatcli.loader", "chatcli.remote", "chatcli.generation",
                *TERMINAL)),
    Rule("chat/commands.py knows nothing about prompt_toolkit",
         ("chatcli.chat.commands",), never=("prompt_toolkit", "chatcli.ui.input")),
    Rule("cli/ and chat/repl.py know nothing about how tokens are chosen",
         ("chatcli.cli", "chatcli.chat.repl"), never=("torch", *TOKEN_CHOICE)),
    Rule("cli/history.py knows nothing about models or decoding",
         ("chatcli.cli.history",),
         never=("chatcli.lm", "chatcli.loader", "chatcli.decoding", "chatcli.generation",
                "chatcli.remote", "chatcli.runtime", "chatcli.sources", "chatcli.registry")),
    Rule("cli/options.py knows nothing about models or torch",
         ("chatcli.cli.options",),
         never=("torch", "transformers", "chatcli.lm", "chatcli.loader", "chatcli.sources",
                "chatcli.remote")),
    Rule("only cli/ imports typer",
         ("chatcli",), exempt=("chatcli.cli",), never=("typer",)),
    Rule("nothing outside cli/ imports chatcli.cli (but the entry point, __main__.py)",
         ("chatcli",), exempt=("chatcli.cli", "chatcli.__main__"), never=("chatcli.cli",)),
    Rule("torch, transformers, safetensors and huggingface_hub are imported inside "
         "functions outside lm/, so that `chatcli --help` stays instant",
         ("chatcli",), exempt=("chatcli.lm",),
         never=("torch", "transformers", "safetensors", "huggingface_hub"), eager=True),
]


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    eager: bool  # runs when the importer itself is imported


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `package`."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def read_imports(package: Path) -> list[Import]:
    """Every import statement of every module under `package`."""
    modules = module_names(package)
    found: list[Import] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"

        def target(node: ast.ImportFrom, name: str = name, is_package: bool = is_package) -> str:
            if not node.level:
                return node.module or ""
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            return ".".join(base + ([node.module] if node.module else []))

        def visit(node: ast.AST, eager: bool, name: str = name) -> None:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(name, alias.name, node.lineno, eager))
            elif isinstance(node, ast.ImportFrom):
                source = target(node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    imported = submodule if submodule in modules else source
                    found.append(Import(name, imported, node.lineno, eager))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for child in ast.iter_child_nodes(node):
                    visit(child, False)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                for child in node.body:
                    visit(child, False)
                for child in node.orelse:
                    visit(child, eager)
            else:
                for child in ast.iter_child_nodes(node):
                    visit(child, eager)

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return found


def violations(rule: Rule, imports: list[Import]) -> list[str]:
    """One line per import that breaks `rule`."""
    found = []
    for imp in imports:
        if not any(within(imp.importer, s) for s in rule.scope):
            continue
        if any(within(imp.importer, e) for e in rule.exempt) or (rule.eager and not imp.eager):
            continue
        banned = any(within(imp.imported, n) for n in rule.never)
        outside_only = rule.only is not None and within(imp.imported, "chatcli") and not any(
            within(imp.imported, o) for o in rule.only)
        if banned or outside_only:
            found.append(f"{imp.importer} (line {imp.line}) imports {imp.imported}: "
                         f"breaks the rule '{rule.text}'")
    return found


IMPORTS = read_imports(PACKAGE)


@pytest.mark.parametrize("rule", RULES, ids=[r.text[:60] for r in RULES])
def test_rule_holds(rule: Rule) -> None:
    broken = violations(rule, IMPORTS)
    assert not broken, "\n".join(broken)


def test_rules_name_real_modules() -> None:
    """A misspelt module in the table would make its rule hold vacuously."""
    modules = module_names(PACKAGE)
    for rule in RULES:
        named = [*rule.scope, *rule.exempt, *(rule.only or ()),
                 *(n for n in rule.never if within(n, "chatcli"))]
        for name in named:
            assert any(within(m, name) for m in modules), f"'{rule.text}' names {name}"
        for scope in rule.scope:
            covered = [m for m in modules if within(m, scope)
                       and not any(within(m, e) for e in rule.exempt)]
            assert covered, f"'{rule.text}' covers no module"


def test_the_graph_holds_what_chatcli_imports() -> None:
    """The graph sees lazy imports and `from chatcli import module`, with their lines."""
    assert any(i.importer == "chatcli.lm.graphs" and i.imported == "chatcli.progress"
               and i.eager for i in IMPORTS)
    lazy = [i for i in IMPORTS if i.importer == "chatcli.remote.model"
            and i.imported == "transformers"]
    assert lazy and not any(i.eager for i in lazy)
    assert any(i.importer == "chatcli.store" and i.imported == "chatcli.paths" for i in IMPORTS)


def test_a_broken_rule_is_named(tmp_path: Path) -> None:
    package = tmp_path / "chatcli"
    (package / "ui").mkdir(parents=True)
    (package / "lm").mkdir()
    for name in ("__init__.py", "ui/__init__.py", "lm/__init__.py", "errors.py", "lm/base.py",
                 "lm/tokenizer.py"):
        (package / name).write_text('"""x"""\n')
    (package / "ui" / "table.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from chatcli import errors\n"
        "if TYPE_CHECKING:\n"
        "    import torch\n"
        "def show() -> None:\n"
        "    from chatcli.lm import tokenizer\n"
        "    from . import helper\n")
    imports = read_imports(package)
    ui_rule = next(r for r in RULES if r.scope == ("chatcli.ui",))
    assert violations(ui_rule, imports) == [
        "chatcli.ui.table (line 4) imports torch: breaks the rule "
        f"'{ui_rule.text}'",
        "chatcli.ui.table (line 6) imports chatcli.lm.tokenizer: breaks the rule "
        f"'{ui_rule.text}'",
    ]
    assert Import("chatcli.ui.table", "chatcli.ui", 7, False) in imports  # no helper module
    lazy_rule = RULES[-1]
    assert violations(lazy_rule, imports) == []  # torch only under TYPE_CHECKING
    (package / "ui" / "table.py").write_text("import torch.nn\n")
    assert violations(lazy_rule, read_imports(package)) == [
        f"chatcli.ui.table (line 1) imports torch.nn: breaks the rule '{lazy_rule.text}'"]
