"""A small, safe expression language for selecting rows of a ``.cs`` dataset.

Expressions are parsed by a hand-written tokenizer and recursive-descent parser
into a tree of a few node types, then evaluated column-at-a-time with NumPy.
Nothing is ever passed to :func:`eval`; only the constructs below exist.

Grammar (lowest precedence first)::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum [ (CMP sum)+ | ["not"] "in" list | "between" sum "and" sum ]
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/" | "%") unary)*
    unary      := "-" unary | atom
    atom       := NUMBER | STRING | "true" | "false" | FIELD ["[" INT "]"]
                | "abs" "(" expr ")" | "(" expr ")"
    list       := "[" [literal ("," literal)*] "]"

Field names are written as they are, slashes included (``ctf/df1_A``); a name
that holds other characters is quoted with backticks. Because ``/`` belongs to
field names, division needs spaces around it (``ctf/df1_A / 2``). Strings compare
with byte-string fields; ``blob/shape[0]`` picks one element of an array field.
Comparisons may chain: ``0.1 < alignments2D/alpha <= 1``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from stacktools.errors import ExpressionError

KEYWORDS = {"and", "or", "not", "in", "between", "true", "false", "abs"}
COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}

_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<quoted>`[^`]+`)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z0-9_]+)*)
  | (?P<op>==|!=|<=|>=|<|>|[-+*/%()\[\],])
""", re.VERBOSE)


@dataclass(frozen=True)
class Token:
    kind: str      # number, string, name, keyword, op, end
    value: Any
    pos: int       # 0-based offset in the expression
    glued: bool    # no whitespace before this token


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens; raise :class:`ExpressionError` on a stray character."""
    tokens: list[Token] = []
    pos, glued = 0, False
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise _error(text, pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        raw = m.group()
        if kind == "ws":
            glued = False
            pos = m.end()
            continue
        if kind == "number":
            value: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "string":
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif kind == "quoted":
            kind, value = "name", raw[1:-1]
        elif kind == "name" and raw in KEYWORDS:
            kind, value = "keyword", raw
        else:
            value = raw
        tokens.append(Token(kind, value, pos, glued))
        glued = True
        pos = m.end()
    tokens.append(Token("end", None, len(text), False))
    return tokens


def _error(text: str, pos: int, msg: str) -> ExpressionError:
    return ExpressionError(f"bad expression {text!r}: {msg} at column {pos + 1}")


# Parse tree: plain tuples, first element the node type.
#   ("lit", value) ("field", name, index|None) ("neg", x) ("abs", x)
#   ("arith", op, a, b) ("cmp", op, a, b) ("in", x, values, negate)
#   ("between", x, lo, hi) ("and", a, b) ("or", a, b) ("not", x)

class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def at(self, kind: str, value: Any = None) -> bool:
        t = self.tok
        return t.kind == kind and (value is None or t.value == value)

    def take(self, kind: str, value: Any = None, what: str | None = None) -> Token:
        if not self.at(kind, value):
            raise self.fail(f"expected {what or value or kind}")
        t = self.tok
        self.i += 1
        return t

    def fail(self, msg: str) -> ExpressionError:
        t = self.tok
        found = "end of expression" if t.kind == "end" else repr(str(t.value))
        return _error(self.text, t.pos, f"{msg}, found {found}")

    def parse(self):
        if self.at("end"):
            raise _error(self.text, 0, "empty expression")
        node = self.or_()
        if not self.at("end"):
            raise self.fail("expected 'and', 'or' or the end")
        return node

    def or_(self):
        node = self.and_()
        while self.at("keyword", "or"):
            self.i += 1
            node = ("or", node, self.and_())
        return node

    def and_(self):
        node = self.not_()
        while self.at("keyword", "and"):
            self.i += 1
            node = ("and", node, self.not_())
        return node

    def not_(self):
        if self.at("keyword", "not"):
            self.i += 1
            return ("not", self.not_())
        return self.comparison()

    def comparison(self):
        left = self.sum_()
        if self.at("op") and self.tok.value in COMPARISONS:
            node = None
            while self.at("op") and self.tok.value in COMPARISONS:
                op = self.take("op").value
                right = self.sum_()
                part = ("cmp", op, left, right)
                node = part if node is None else ("and", node, part)
                left = right
            return node
        if self.at("keyword", "in"):
            self.i += 1
            return ("in", left, self.list_(), False)
        if self.at("keyword", "not") and self.tokens[self.i + 1].kind == "keyword" \
                and self.tokens[self.i + 1].value == "in":
            self.i += 2
            return ("in", left, self.list_(), True)
        if self.at("keyword", "between"):
            self.i += 1
            lo = self.sum_()
            self.take("keyword", "and")
            return ("between", left, lo, self.sum_())
        return left

    def sum_(self):
        node = self.product()
        while self.at("op") and self.tok.value in ("+", "-"):
            op = self.take("op").value
            node = ("arith", op, node, self.product())
        return node

    def product(self):
        node = self.unary()
        while self.at("op") and self.tok.value in ("*", "/", "%"):
            op = self.take("op").value
            node = ("arith", op, node, self.unary())
        return node

    def unary(self):
        if self.at("op", "-"):
            self.i += 1
            inner = self.unary()
            if inner[0] == "lit" and isinstance(inner[1], (int, float)) \
                    and not isinstance(inner[1], bool):
                return ("lit", -inner[1])
            return ("neg", inner)
        return self.atom()

    def atom(self):
        t = self.tok
        if t.kind in ("number", "string"):
            self.i += 1
            return ("lit", t.value)
        if t.kind == "keyword" and t.value in ("true", "false"):
            self.i += 1
            return ("lit", t.value == "true")
        if t.kind == "keyword" and t.value == "abs":
            self.i += 1
            self.take("op", "(")
            inner = self.or_()
            self.take("op", ")")
            return ("abs", inner)
        if t.kind == "name":
            self.i += 1
            index = None
            if self.at("op", "[") and self.tok.glued:
                self.i += 1
                index = self.take("number", what="an element index").value
                if not isinstance(index, int):
                    raise _error(self.text, self.tokens[self.i - 1].pos, "element index must be an integer")
                self.take("op", "]")
            return ("field", t.value, index, t.pos)
        if t.kind == "op" and t.value == "(":
            self.i += 1
            node = self.or_()
            self.take("op", ")")
            return node
        raise self.fail("expected a field, a number, a string or '('")

    def list_(self):
        self.take("op", "[", what="'[' to start a list")
        values = []
        while not self.at("op", "]"):
            neg = False
            if self.at("op", "-"):
                self.i += 1
                neg = True
            t = self.tok
            if t.kind not in ("number", "string") or (neg and t.kind == "string"):
                raise self.fail("expected a number or a string in the list")
            self.i += 1
            values.append(-t.value if neg else t.value)
            if not self.at("op", "]"):
                self.take("op", ",", what="',' or ']'")
        self.take("op", "]")
        return values


def parse(text: str):
    """Parse ``text`` into an expression tree; raise :class:`ExpressionError` if malformed."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be text, not {type(text).__name__}")
    return _Parser(text).parse()


def fields_used(text: str) -> list[str]:
    """Names of the fields an expression refers to, in order of appearance."""
    out: list[str] = []

    def walk(node):
        if node[0] == "field":
            if node[1] not in out:
                out.append(node[1])
            return
        for part in node[1:]:
            if isinstance(part, tuple):
                walk(part)
    walk(parse(text))
    return out


def evaluate(text: str, data: np.ndarray, label: str = "dataset") -> np.ndarray:
    """Evaluate a boolean expression over every row of ``data`` at once.

    Parameters
    ----------
    text
        The expression, e.g. ``"alignments2D/class in [1, 4, 7]"``.
    data
        One-dimensional structured array (a ``.cs`` dataset).
    label
        Name of the dataset, for error messages (usually its file name).

    Returns
    -------
    numpy.ndarray
        Boolean mask with one entry per row.
    """
    tree = parse(text)
    ev = _Evaluator(text, data, label)
    with np.errstate(all="ignore"):
        result = ev.eval(tree)
    if isinstance(result, _Str):
        raise ExpressionError(f"bad expression {text!r}: a string is not a condition")
    arr = np.asarray(result)
    if arr.dtype != np.bool_:
        raise ExpressionError(f"bad expression {text!r}: result is a {_kind_name(arr)}, "
                              "not a condition (compare it with something)")
    if arr.ndim == 0:
        return np.full(len(data), bool(arr))
    return arr


class _Str(str):
    """A string literal (kept apart from field values until a comparison)."""


def _kind_name(arr: np.ndarray) -> str:
    if arr.dtype.kind == "S":
        return "string"
    if arr.dtype == np.bool_:
        return "condition"
    return "number"


class _Evaluator:
    def __init__(self, text: str, data: np.ndarray, label: str):
        self.text = text
        self.data = data
        self.label = label
        self.names = data.dtype.names or ()

    def fail(self, msg: str) -> ExpressionError:
        return ExpressionError(f"bad expression {self.text!r}: {msg}")

    def eval(self, node):
        kind = node[0]
        if kind == "lit":
            v = node[1]
            return _Str(v) if isinstance(v, str) else v
        if kind == "field":
            return self.field(node[1], node[2])
        if kind == "neg":
            return -self.number(self.eval(node[1]), "-")
        if kind == "abs":
            return np.abs(self.number(self.eval(node[1]), "abs"))
        if kind == "arith":
            a = self.number(self.eval(node[2]), node[1])
            b = self.number(self.eval(node[3]), node[1])
            op = node[1]
            if op == "+":
                return np.add(a, b)
            if op == "-":
                return np.subtract(a, b)
            if op == "*":
                return np.multiply(a, b)
            if op == "/":
                return np.true_divide(a, b)
            return np.mod(a, b)
        if kind == "cmp":
            return self.compare(node[1], self.eval(node[2]), self.eval(node[3]))
        if kind == "in":
            mask = self.isin(self.eval(node[1]), node[2])
            return ~mask if node[3] else mask
        if kind == "between":
            x = self.eval(node[1])
            return self.compare(">=", x, self.eval(node[2])) & self.compare("<=", x, self.eval(node[3]))
        if kind in ("and", "or"):
            a = self.condition(self.eval(node[1]), kind)
            b = self.condition(self.eval(node[2]), kind)
            return (a & b) if kind == "and" else (a | b)
        if kind == "not":
            return ~self.condition(self.eval(node[1]), "not")
        raise self.fail(f"unknown node {kind}")  # unreachable: the parser makes no others

    def field(self, name: str, index: int | None):
        if name not in self.names:
            close = difflib.get_close_matches(name, self.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ExpressionError(f"{self.label}: no field {name!r}{hint} in expression {self.text!r}")
        col = self.data[name]
        shape = self.data.dtype.fields[name][0].shape
        if index is None:
            if shape:
                raise ExpressionError(f"{self.label}: field {name!r} holds {shape} values per row; "
                                      f"pick one, e.g. {name}[0], in expression {self.text!r}")
            return col
        if not shape:
            raise ExpressionError(f"{self.label}: field {name!r} is not an array field; "
                                  f"drop [{index}] in expression {self.text!r}")
        flat = col.reshape(len(col), int(np.prod(shape)))
        if not 0 <= index < flat.shape[1]:
            raise ExpressionError(f"{self.label}: index {index} out of range for {name!r} "
                                  f"({flat.shape[1]} values) in expression {self.text!r}")
        return flat[:, index]

    def number(self, v, op: str):
        if isinstance(v, _Str) or (isinstance(v, np.ndarray) and v.dtype.kind in "SU"):
            raise self.fail(f"'{op}' needs numbers, not strings")
        return v

    def condition(self, v, op: str):
        arr = np.asarray(v)
        if arr.dtype != np.bool_:
            raise self.fail(f"'{op}' needs conditions on both sides, got a {_kind_name(arr)}")
        return arr

    def compare(self, op: str, a, b):
        a, b = self.comparable(a, b)
        if op == "==":
            return np.equal(a, b)
        if op == "!=":
            return np.not_equal(a, b)
        if op == "<":
            return np.less(a, b)
        if op == "<=":
            return np.less_equal(a, b)
        if op == ">":
            return np.greater(a, b)
        return np.greater_equal(a, b)

    def comparable(self, a, b):
        a_str = isinstance(a, _Str) or (isinstance(a, np.ndarray) and a.dtype.kind == "S")
        b_str = isinstance(b, _Str) or (isinstance(b, np.ndarray) and b.dtype.kind == "S")
        if a_str != b_str:
            raise self.fail("cannot compare a string with a number")
        if a_str:
            return _as_bytes(a), _as_bytes(b)
        return a, b

    def isin(self, x, values: list):
        if isinstance(x, _Str):
            raise self.fail("'in' needs a field on its left")
        x = np.asarray(x)
        if x.dtype.kind == "S":
            if any(not isinstance(v, str) for v in values):
                raise self.fail("a string field can only be 'in' a list of strings")
            return np.isin(x, np.array([v.encode() for v in values], dtype=bytes))
        if any(isinstance(v, str) for v in values):
            raise self.fail("a numeric field can only be 'in' a list of numbers")
        if x.dtype.kind in "ui" and all(isinstance(v, int) for v in values):
            # Keep integer comparison exact (uids need all 64 bits): drop values the
            # field's type cannot hold, they cannot match.
            info = np.iinfo(x.dtype)
            vals = np.array([v for v in values if info.min <= v <= info.max], dtype=x.dtype)
            return np.isin(x, vals)
        return np.isin(x.astype(np.float64, copy=False), np.array(values, dtype=np.float64))


def _as_bytes(v):
    return v.encode() if isinstance(v, _Str) else v
