"""The two small expression languages of a workflow, parsed into trees and evaluated without eval.

`depends`: task results joined by `&&`, `||`, `!` and parentheses, e.g.
`train && (validate.Failed || validate.Errored)`. A bare `a` means
`(a.Succeeded || a.Skipped)`, as in Argo Workflows.

`when`: comparisons between parameters and literals, e.g.
`{{workflow.parameters.quantize}} == true && {{workflow.parameters.epochs}} > 3`.
References are tokens of their own, so a parameter's value can never change
the shape of the expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

RESULTS = ("Succeeded", "Failed", "Errored", "Skipped", "Omitted")
COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
MAX_EXPRESSION_LENGTH = 4096


class ExpressionError(ValueError):
    """A `depends` or `when` expression that does not parse or cannot be evaluated."""


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    position: int


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


@dataclass(frozen=True)
class TaskResult:
    """`task.Result`; `result` is None for a bare task name."""

    task: str
    result: str | None


@dataclass(frozen=True)
class Reference:
    """`{{path}}` in a `when` expression."""

    path: str


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Compare:
    left: Reference | Literal
    op: str
    right: Reference | Literal


@dataclass(frozen=True)
class Truthy:
    """A lone operand in `when`: its value must read as true or false."""

    operand: Reference | Literal


Node = Not | And | Or | TaskResult | Compare | Truthy

_DEPENDS_TOKENS = re.compile(
    r"\s*(?:(?P<op>&&|\|\||!|\(|\))|(?P<name>[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[A-Za-z]+)?))"
)
_WHEN_TOKENS = re.compile(
    r"\s*(?:(?P<op>&&|\|\||==|!=|<=|>=|<|>|!|\(|\))"
    r"|(?P<ref>\{\{\s*[A-Za-z0-9_.\-]+\s*\}\})"
    r"|(?P<string>'[^']*'|\"[^\"]*\")"
    r"|(?P<word>[A-Za-z0-9_.\-+:/]+))"
)


def _tokenize(text: str, pattern: re.Pattern[str], what: str) -> list[Token]:
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"{what} expression longer than {MAX_EXPRESSION_LENGTH} characters")
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = pattern.match(text, position)
        if not match or match.end() == position:
            raise ExpressionError(f"{what} expression {text!r}: unexpected character at {position}")
        kind = next(k for k, v in match.groupdict().items() if v is not None and k in _KINDS)
        value = match.group(kind)
        tokens.append(Token(kind, value, match.start(kind)))
        position = match.end()
    if not tokens:
        raise ExpressionError(f"{what} expression is empty")
    return tokens


_KINDS = ("op", "name", "ref", "string", "word")


class _Parser:
    """Recursive descent over `or := and ('||' and)*; and := not ('&&' not)*; not := '!' not | atom`."""

    def __init__(self, text: str, tokens: list[Token], atom: Callable[[_Parser], Node], what: str) -> None:
        self.text = text
        self.tokens = tokens
        self.index = 0
        self.atom = atom
        self.what = what

    def fail(self, message: str) -> ExpressionError:
        return ExpressionError(f"{self.what} expression {self.text!r}: {message}")

    def peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.fail("ends too early")
        self.index += 1
        return token

    def at_op(self, text: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text == text

    def parse(self) -> Node:
        node = self.parse_or()
        token = self.peek()
        if token is not None:
            raise self.fail(f"unexpected {token.text!r} at {token.position}")
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.at_op("||"):
            self.take()
            node = Or(node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while self.at_op("&&"):
            self.take()
            node = And(node, self.parse_not())
        return node

    def parse_not(self) -> Node:
        if self.at_op("!"):
            self.take()
            return Not(self.parse_not())
        if self.at_op("("):
            self.take()
            node = self.parse_or()
            if not self.at_op(")"):
                raise self.fail("missing ')'")
            self.take()
            return node
        return self.atom(self)


def _depends_atom(parser: _Parser) -> Node:
    token = parser.take()
    if token.kind != "name":
        raise parser.fail(f"expected a task name at {token.position}, got {token.text!r}")
    task, _, result = token.text.partition(".")
    if result and result not in RESULTS:
        raise parser.fail(f"unknown result {result!r} for task {task!r} (one of {', '.join(RESULTS)})")
    return TaskResult(task, result or None)


def _when_operand(parser: _Parser) -> Reference | Literal:
    token = parser.take()
    if token.kind == "ref":
        return Reference(token.text[2:-2].strip())
    if token.kind == "string":
        return Literal(token.text[1:-1])
    if token.kind == "word":
        return Literal(token.text)
    raise parser.fail(f"expected a value at {token.position}, got {token.text!r}")


def _when_atom(parser: _Parser) -> Node:
    left = _when_operand(parser)
    token = parser.peek()
    if token is not None and token.kind == "op" and token.text in COMPARISONS:
        parser.take()
        return Compare(left, token.text, _when_operand(parser))
    return Truthy(left)


def parse_depends(text: str) -> Node:
    return _Parser(text, _tokenize(text, _DEPENDS_TOKENS, "depends"), _depends_atom, "depends").parse()


def parse_when(text: str) -> Node:
    return _Parser(text, _tokenize(text, _WHEN_TOKENS, "when"), _when_atom, "when").parse()


def walk(node: Node) -> list[Node]:
    """Every node of the tree, parents before children."""
    out: list[Node] = [node]
    if isinstance(node, Not):
        out += walk(node.operand)
    elif isinstance(node, And | Or):
        out += walk(node.left) + walk(node.right)
    return out


def depends_tasks(node: Node) -> set[str]:
    return {n.task for n in walk(node) if isinstance(n, TaskResult)}


def when_references(node: Node) -> set[str]:
    refs: set[str] = set()
    for n in walk(node):
        if isinstance(n, Compare):
            refs |= {o.path for o in (n.left, n.right) if isinstance(o, Reference)}
        elif isinstance(n, Truthy) and isinstance(n.operand, Reference):
            refs.add(n.operand.path)
    return refs


def evaluate_depends(node: Node, results: Mapping[str, str]) -> bool:
    """`results` maps every task the expression names to its final phase."""
    match node:
        case Not(operand):
            return not evaluate_depends(operand, results)
        case And(left, right):
            return evaluate_depends(left, results) and evaluate_depends(right, results)
        case Or(left, right):
            return evaluate_depends(left, results) or evaluate_depends(right, results)
        case TaskResult(task, None):
            return results[task] in ("Succeeded", "Skipped")
        case TaskResult(task, result):
            return results[task] == result
    raise ExpressionError(f"not a depends expression: {node!r}")


def _value(operand: Reference | Literal, values: Mapping[str, str]) -> str:
    if isinstance(operand, Literal):
        return operand.text
    if operand.path not in values:
        raise ExpressionError(f"when: unknown reference {{{{{operand.path}}}}}")
    return values[operand.path]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ExpressionError(f"when: {text!r} is neither true nor false")


def evaluate_when(node: Node, values: Mapping[str, str]) -> bool:
    """Numbers compare as numbers, other values as text (only == and != for text)."""
    match node:
        case Not(operand):
            return not evaluate_when(operand, values)
        case And(left, right):
            return evaluate_when(left, values) and evaluate_when(right, values)
        case Or(left, right):
            return evaluate_when(left, values) or evaluate_when(right, values)
        case Truthy(operand):
            return _bool(_value(operand, values))
        case Compare(left, op, right):
            a, b = _value(left, values), _value(right, values)
            na, nb = _number(a), _number(b)
            if na is not None and nb is not None:
                return _compare(na, op, nb)
            if op in ("==", "!="):
                equal = a == b or (a.lower() in ("true", "false") and a.lower() == b.lower())
                return equal if op == "==" else not equal
            raise ExpressionError(f"when: cannot order {a!r} {op} {b!r}: both sides must be numbers")
    raise ExpressionError(f"not a when expression: {node!r}")


def _compare(a: float, op: str, b: float) -> bool:
    return {
        "==": a == b,
        "!=": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }[op]
