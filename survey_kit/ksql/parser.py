"""Turn ksqlDB statement text into the statement tree of `ast`.

A script is first cut into statements with a lark lexer (so `;` inside strings,
quoted identifiers and comments is respected), then each statement has its
`${name}` variables substituted and is parsed with the LALR grammar in
`ksql.lark`. Anything outside the grammar is reported as ksqlDB reports it
(`line 3:11: Syntax Error`, then ANTLR's words for what was found and what was expected).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.lexer import PatternStr

from . import ast
from .types import KsqlError, SqlType, simple_type

_SPLITTER_GRAMMAR = r"""
start: piece*
piece: STRING | QUOTED | LINE_COMMENT | BLOCK_COMMENT | SEMI | OTHER
STRING: /'([^']|'')*'/
QUOTED: /`([^`]|``)*`/
LINE_COMMENT.2: /--[^\n]*/
BLOCK_COMMENT.2: /\/\*(.|\n)*?\*\//
SEMI: ";"
OTHER: /[^;'`\-\/]+/ | "-" | "/"
"""

_TIME_UNITS = {
    "MILLISECOND": 1,
    "MILLISECONDS": 1,
    "SECOND": 1000,
    "SECONDS": 1000,
    "MINUTE": 60_000,
    "MINUTES": 60_000,
    "HOUR": 3_600_000,
    "HOURS": 3_600_000,
    "DAY": 86_400_000,
    "DAYS": 86_400_000,
}

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class StatementText:
    """One statement of a script, with the line and column it starts at."""

    text: str
    line: int
    column: int


@lru_cache(maxsize=1)
def _splitter() -> Lark:
    return Lark(_SPLITTER_GRAMMAR, parser="lalr", lexer="basic")


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files(__package__).joinpath("ksql.lark").read_text()
    # building the LALR tables takes ~0.4 s in every process (each CLI call, engine worker, kernel); lark
    # caches them, checked against the grammar's hash. In the user's own cache folder, not lark's default
    # of a predictable name in the shared /tmp: the cache is a pickle, loaded as code.
    return Lark(grammar, start="statement", parser="lalr", lexer="contextual", propagate_positions=True,
                cache=_grammar_cache())


def _grammar_cache() -> str | bool:
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "survey-kit"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False  # read-only home: build the tables each time
    return str(folder / "ksql-grammar.lark-cache")


def split_statements(script: str) -> list[StatementText]:
    """Cut a script into statements at each `;` outside strings, quoted names and comments."""
    statements: list[StatementText] = []
    pieces: list[str] = []
    start: tuple[int, int] | None = None
    try:
        tokens = list(_splitter().lex(script))
    except UnexpectedCharacters as exc:
        raise KsqlError(f"Unterminated string or quoted identifier at line {exc.line}, column {exc.column}") from None
    for token in tokens:
        if token.type == "SEMI":
            text = "".join(pieces).strip()
            if text:
                statements.append(StatementText(text, *start))
            pieces, start = [], None
            continue
        if token.type in ("LINE_COMMENT", "BLOCK_COMMENT"):
            pieces.append(" ")
            continue
        if start is None and token.value.strip():
            stripped = token.value.lstrip()
            skipped = token.value[: len(token.value) - len(stripped)]
            line = token.line + skipped.count("\n")
            column = (len(skipped) - skipped.rfind("\n")) if "\n" in skipped else token.column + len(skipped)
            start = (line, column)
        pieces.append(token.value)
    tail = "".join(pieces).strip()
    if tail:
        raise KsqlError(f"Statement starting at line {start[0]}, column {start[1]} is not terminated by ';': {tail[:60]}")
    return statements


def substitute(text: str, variables: dict[str, str]) -> str:
    """Replace `${name}` (case-insensitive) by the variable's value; `$$` escapes a `$`."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1).lower()
        if name not in variables:
            raise KsqlError(f"Variable '{match.group(1)}' is not defined. Define it first: DEFINE {match.group(1)} = '...';")
        return variables[name]

    return _VARIABLE.sub(replace, text)


def parse_statement(statement: StatementText) -> ast.Statement:
    """Parse one (already substituted) statement into its tree."""
    try:
        tree = _parser().parse(statement.text)
        node = _ToAst(statement).transform(tree)
    except UnexpectedInput as exc:
        raise KsqlError(_describe_syntax_error(exc, statement)) from None
    except VisitError as exc:
        if isinstance(exc.orig_exc, KsqlError):
            raise exc.orig_exc from None
        raise
    node.text = statement.text
    node.position = ast.Position(statement.line, statement.column)
    return node


def _absolute(statement: StatementText, line: int, column: int) -> ast.Position:
    if line == 1:
        return ast.Position(statement.line, statement.column + column - 1)
    return ast.Position(statement.line + line - 1, column)


def _describe_syntax_error(exc: UnexpectedInput, statement: StatementText) -> str:
    """ksqlDB's message for a statement its grammar rejects: `line L:C: Syntax Error`, then what ANTLR (ksqlDB's
    parser) says of it, then the statement. A statement of a kind the engine does not run says so instead."""
    first_word = statement.text.split(None, 1)[0].upper() if statement.text.split() else ""
    eof = isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END")
    if eof:
        where = _absolute(statement, statement.text.count("\n") + 1, len(statement.text.rsplit("\n", 1)[-1]) + 1)
    else:
        where = _absolute(statement, exc.line, exc.column)
        if exc.line == 1 and exc.column == 1:
            return f"Unsupported statement '{first_word}' at {where}: the engine runs CREATE, DROP, SET, UNSET, DEFINE, UNDEFINE, SHOW, LIST, DESCRIBE and TERMINATE."
    if isinstance(exc, UnexpectedCharacters):
        detail = f"token recognition error at: '{statement.text[exc.pos_in_stream:exc.pos_in_stream + 1]}'"
    else:
        detail = _what_antlr_says(exc, eof)
    if eof:
        detail += " (the statement ends too early)"
    return f"line {where.line}:{where.column}: Syntax Error\n{detail}\nStatement at {ast.Position(statement.line, statement.column)}: {statement.text}"


def _what_antlr_says(exc: UnexpectedToken | UnexpectedEOF, eof: bool) -> str:
    """ANTLR's words for an unexpected token: `missing X at 'y'` where only X could come and the parse would go on
    with X inserted before it (ANTLR's single-token insertion), else `mismatched input 'y' expecting {...}`."""
    found = "<EOF>" if eof else exc.token.value
    parser = getattr(exc, "interactive_parser", None)
    expected = sorted(parser.accepts() if parser is not None else exc.expected)
    if parser is not None and not eof and len(expected) == 1 and expected[0] != "$END":
        trial = parser.copy()
        trial.feed_token(Token(expected[0], ""))
        if exc.token.type in trial.accepts():
            return f"missing {_shown(expected)} at '{found}'"
    return f"mismatched input '{found}' expecting {_shown(expected)}"


# ksqlDB's names for the terminals that are not fixed words or symbols (others keep the grammar's name)
_TERMINAL_NAMES = {"$END": "<EOF>", "IDENT": "IDENTIFIER", "QUOTED_IDENT": "BACKQUOTED_IDENTIFIER"}


def _shown(names: list[str]) -> str:
    """Terminals as ANTLR lists them: `')'` alone, `{'EMIT', 'WHERE', IDENTIFIER}` for several."""
    shown: set[str] = set()
    for name in names:
        words = _words_of(name)
        shown |= {f"'{word.upper()}'" for word in words} if words else {_TERMINAL_NAMES.get(name, name)}
    ordered = sorted(shown)
    return ordered[0] if len(ordered) == 1 else "{" + ", ".join(ordered) + "}"


def _words_of(name: str) -> list[str]:
    """The fixed words or symbols terminal `name` stands for (`"GROUP"i`, or `"CHANGES"i | "FINAL"i`,
    which lark makes `(?:(?i:CHANGES)|(?i:FINAL))`); none for a pattern such as IDENT's."""
    if name in _TERMINAL_NAMES:
        return []
    pattern = _parser().get_terminal(name).pattern
    if isinstance(pattern, PatternStr):
        return [pattern.value]
    alternation = re.fullmatch(r"\(\?:(.*)\)", pattern.value)
    if alternation is None:
        return []
    words = []
    for alternative in re.split(r"(?<!\\)\|", alternation.group(1)):
        word = re.sub(r"\\(.)", r"\1", re.sub(r"^\(\?i:(.*)\)$", r"\1", alternative))  # (?i:FINAL) -> FINAL, \+ -> +
        if not re.fullmatch(r"\w+|[^\w\s]+", word):
            return []
        words.append(word)
    return words


def identifier_name(token: Token) -> str:
    text = str(token)
    if token.type == "QUOTED_IDENT":
        return text[1:-1].replace("``", "`")
    return text.upper()


def string_value(token: Token) -> str:
    return str(token)[1:-1].replace("''", "'")


def _number(text: str):
    if re.fullmatch(r"\d+", text):
        return int(text)
    return float(text)


@v_args(inline=True)
class _ToAst(Transformer):
    """Build `ast` nodes from the lark tree."""

    def __init__(self, statement: StatementText):
        super().__init__()
        self.statement = statement
        self._clause_positions: dict[str, ast.Position] = {}

    def _pos(self, meta_or_token) -> ast.Position:
        line = getattr(meta_or_token, "line", 1) or 1
        column = getattr(meta_or_token, "column", 1) or 1
        return _absolute(self.statement, line, column)

    # --- names, literals, types
    def identifier(self, token):
        return identifier_name(token)

    def string_literal(self, token):
        return ast.Literal(string_value(token), SqlType("STRING"))

    def number_literal(self, token):
        value = _number(str(token))
        if isinstance(value, int):
            kind = "INT" if value < 2**31 else "BIGINT"
            return ast.Literal(value, SqlType(kind))
        digits = str(token)
        if "e" in digits.lower():
            return ast.Literal(value, SqlType("DOUBLE"))
        whole, _, frac = digits.partition(".")
        return ast.Literal(value, SqlType("DECIMAL", precision=len(whole.lstrip("0")) + len(frac), scale=len(frac)))

    def true_literal(self, _):
        return ast.Literal(True, SqlType("BOOLEAN"))

    def false_literal(self, _):
        return ast.Literal(False, SqlType("BOOLEAN"))

    def null_literal(self, _):
        return ast.Literal(None, None)

    def simple_type(self, name, *params):
        return simple_type(name, [int(str(p)) for p in params])

    def array_type(self, _kw, item):
        return SqlType("ARRAY", item=item)

    def map_type(self, _kw, key, value):
        return SqlType("MAP", key=key, item=value)

    def struct_type_field(self, name, field_type):
        return (name, field_type)

    def struct_type(self, _kw, *fields):
        return SqlType("STRUCT", fields=tuple(fields))

    # --- expressions
    def column_ref(self, first, second=None):
        if second is None:
            return ast.ColumnRef(first)
        return ast.ColumnRef(second, source=first)

    def function_call(self, name, *args):
        if len(args) == 1 and isinstance(args[0], Token) and args[0].type == "STAR":
            return ast.FunctionCall(name, (), star=True)
        return ast.FunctionCall(name, tuple(a for a in args if a is not None))

    def array_constructor(self, _kw, *items):
        return ast.ArrayConstructor(tuple(items))

    def struct_field_value(self, name, expr):
        return (name, expr)

    def struct_constructor(self, name, *fields):
        if name != "STRUCT":
            raise KsqlError(f"Unknown function {name} with named arguments")
        return ast.StructConstructor(tuple(fields))

    def comparison(self, left, op, right):
        op = "!=" if str(op) == "<>" else str(op)
        return ast.BinaryOp(op, left, right)

    def arithmetic(self, left, op, right):
        return ast.BinaryOp(str(op), left, right)

    def and_(self, left, right):
        return ast.BinaryOp("AND", left, right)

    def or_(self, left, right):
        return ast.BinaryOp("OR", left, right)

    def not_(self, operand):
        return ast.Not(operand)

    def negate(self, operand):
        if isinstance(operand, ast.Literal) and isinstance(operand.value, (int, float)):
            return ast.Literal(-operand.value, operand.type)
        return ast.Negate(operand)

    def is_null(self, operand, *rest):
        return ast.IsNull(operand, negated=any(isinstance(r, Token) and r.type == "NOT" for r in rest))

    def between(self, operand, *rest):
        negated = isinstance(rest[0], Token)
        low, high = rest[-2], rest[-1]
        return ast.Between(operand, low, high, negated)

    def in_list(self, operand, *rest):
        negated = bool(rest) and isinstance(rest[0], Token)
        items = tuple(r for r in rest if not isinstance(r, Token))
        return ast.InList(operand, items, negated)

    def like(self, operand, *rest):
        negated = isinstance(rest[0], Token)
        return ast.Like(operand, rest[-1], negated)

    def subscript(self, base, index):
        return ast.Subscript(base, index)

    def dereference(self, base, _arrow, field):
        return ast.Dereference(base, field)

    def when_clause(self, condition, result):
        return (condition, result)

    def case_expr(self, *parts):
        whens = tuple(p for p in parts if isinstance(p, tuple))
        default = parts[-1] if not isinstance(parts[-1], tuple) else None
        return ast.Case(whens, default)

    def cast_expr(self, operand, target):
        return ast.Cast(operand, target)

    # --- query
    def duration(self, amount, unit):
        factor = _TIME_UNITS.get(unit.upper())
        if factor is None:
            raise KsqlError(f"Unknown time unit '{unit}' in duration '{amount} {unit}'. Use MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS.")
        return ast.Duration(int(_number(str(amount)) * factor), f"{amount} {unit.upper()}")

    def window_size(self, d):
        return ("size", d)

    def window_advance(self, d):
        return ("advance", d)

    def window_grace(self, d):
        return ("grace", d)

    def window_retention(self, d):
        return ("retention", d)

    def window_gap(self, d):
        return ("size", d)

    def window_params(self, *params):
        return dict(params)

    @v_args(meta=True, inline=True)
    def window(self, meta, kind, params):
        spec = ast.WindowSpec(str(kind).upper(), params.get("size"), params.get("grace"), params.get("advance"), params.get("retention"), self._pos(meta))
        return ("window", spec)

    def where(self, expr):
        return ("where", expr)

    def group_by(self, *exprs):
        return ("group_by", tuple(exprs))

    @v_args(meta=True, inline=True)
    def partition_by(self, meta, *exprs):
        self._clause_positions["partition_by"] = self._pos(meta)
        return ("partition_by", tuple(exprs))

    def having(self, expr):
        return ("having", expr)

    def emit(self, kind):
        return ("emit", str(kind).upper())

    @v_args(meta=True, inline=True)
    def limit(self, meta, n):
        self._clause_positions["limit"] = self._pos(meta)
        return ("limit", int(str(n)))

    @v_args(meta=True, inline=True)
    def select_all(self, meta):
        return ast.SelectItem(None, position=self._pos(meta))

    @v_args(meta=True, inline=True)
    def select_all_from(self, meta, source):
        return ast.SelectItem(None, star_source=source, position=self._pos(meta))

    @v_args(meta=True, inline=True)
    def select_expr(self, meta, expr, alias=None):
        return ast.SelectItem(expr, alias, position=self._pos(meta))

    def select_items(self, *items):
        return tuple(items)

    @v_args(meta=True, inline=True)
    def aliased_source(self, meta, name, alias=None):
        return ast.SourceRef(name, alias or name, self._pos(meta))

    def join_type(self, *tokens):
        kinds = [str(t).upper() for t in tokens if str(t).upper() != "OUTER"]
        return kinds[0] if kinds else "INNER"

    def within(self, *durations):
        return durations[-1]

    @v_args(meta=True, inline=True)
    def join(self, meta, kind, right, *rest):
        within = rest[0] if len(rest) == 2 else None
        return ast.Join(kind, right, rest[-1], within, self._pos(meta))

    def relation(self, source, *joins):
        return (source, tuple(joins))

    def query(self, items, relation, *clauses):
        parts = dict(clauses)
        source, joins = relation
        return ast.Query(
            select=items,
            source=source,
            joins=joins,
            window=parts.get("window"),
            where=parts.get("where"),
            group_by=parts.get("group_by", ()),
            partition_by=parts.get("partition_by", ()),
            having=parts.get("having"),
            emit=parts.get("emit"),
            limit=parts.get("limit"),
            clause_positions=dict(self._clause_positions),
        )

    # --- statements
    def or_replace(self, *tokens):
        return True if tokens else False

    def if_not_exists(self, *tokens):
        return True if tokens else False

    def if_exists(self, *tokens):
        return True if tokens else False

    def delete_topic(self, *tokens):
        return True if tokens else False

    def source_kind(self, token):
        return str(token).upper()

    def column_constraint(self, *tokens):
        return "PRIMARY KEY" if tokens[0].type == "PRIMARY" else tokens[0].type

    def table_element(self, name, column_type, constraint=None):
        return ast.ColumnDef(name, column_type, constraint)

    def table_elements(self, *columns):
        return tuple(columns)

    def with_prop(self, name, value):
        return (name.upper(), value.value if isinstance(value, ast.Literal) else value)

    def with_props(self, *props):
        return dict(props)

    def create_source(self, or_replace, kind, if_not_exists, name, *rest):
        columns = next((r for r in rest if isinstance(r, tuple)), None)
        props = next((r for r in rest if isinstance(r, dict)), {})
        return ast.CreateSource(kind, name, columns, props, or_replace, if_not_exists)

    def create_as_select(self, or_replace, kind, if_not_exists, name, *rest):
        props = next((r for r in rest if isinstance(r, dict)), {})
        return ast.CreateAsSelect(kind, name, props, rest[-1], or_replace, if_not_exists)

    def set_property(self, name, value):
        return ast.SetProperty(string_value(name), string_value(value))

    def unset_property(self, name):
        return ast.UnsetProperty(string_value(name))

    def define(self, name, value):
        return ast.Define(name.lower(), string_value(value))

    def undefine(self, name):
        return ast.Undefine(name.lower())

    def drop(self, kind, if_exists, name, delete_topic):
        return ast.Drop(kind, name, if_exists, delete_topic)

    def show(self, what, *extended):
        return ast.Show(str(what).upper(), bool(extended))

    def describe(self, name, *extended):
        return ast.Describe(name, bool(extended))

    def explain(self, query_id):
        return ast.Explain(query_id)

    def terminate(self, target):
        return ast.Terminate("ALL" if isinstance(target, Token) else target)


def parse_script(script: str, variables: dict[str, str] | None = None) -> list[ast.Statement]:
    """Parse every statement of a script, applying DEFINE/UNDEFINE as they come.

    `variables` (names case-insensitive) is updated in place with the script's DEFINEs.
    """
    variables = variables if variables is not None else {}
    parsed = []
    for statement in split_statements(script):
        text = substitute(statement.text, variables)
        node = parse_statement(StatementText(text, statement.line, statement.column))
        if isinstance(node, ast.Define):
            variables[node.name] = node.value
        elif isinstance(node, ast.Undefine):
            variables.pop(node.name, None)
        parsed.append(node)
    return parsed
