"""Integer index expressions for the kernel IR.

Index arithmetic (thread -> element mappings, tile offsets, loop bounds) is written once, in
plain Python, against values that may be either ints or `Expr` trees. With ints the result is an
int (the CPU interpreter and the validity checks use that); with a `Var` anywhere the result is a
tree that codegen lowers to LLVM integer instructions. All index values are non-negative, so `//`
and `%` are floor division / remainder on naturals (udiv / urem).

Constant folding happens at construction: `Const(3) + 4` is `7`, `x * 1` is `x`, `x + 0` is `x`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

IntLike = Union[int, "Expr"]

# op name -> python function on ints; comparisons and logic return 0/1
_BINOPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
    "^": lambda a, b: a ^ b,
    "min": min,
    "max": max,
    "<": lambda a, b: int(a < b),
    "<=": lambda a, b: int(a <= b),
    "==": lambda a, b: int(a == b),
    "!=": lambda a, b: int(a != b),
    "and": lambda a, b: int(bool(a) and bool(b)),
    "or": lambda a, b: int(bool(a) or bool(b)),
}


class Expr:
    """Base of the expression tree; arithmetic operators build (and fold) new trees."""

    __slots__ = ()

    def __add__(self, o): return binop("+", self, o)
    def __radd__(self, o): return binop("+", o, self)
    def __sub__(self, o): return binop("-", self, o)
    def __rsub__(self, o): return binop("-", o, self)
    def __mul__(self, o): return binop("*", self, o)
    def __rmul__(self, o): return binop("*", o, self)
    def __floordiv__(self, o): return binop("//", self, o)
    def __rfloordiv__(self, o): return binop("//", o, self)
    def __mod__(self, o): return binop("%", self, o)
    def __rmod__(self, o): return binop("%", o, self)
    def __xor__(self, o): return binop("^", self, o)
    def __rxor__(self, o): return binop("^", o, self)

    def __bool__(self):
        raise TypeError("a symbolic index expression has no truth value; use lt()/select()")


@dataclass(frozen=True, eq=True)
class Var(Expr):
    """A named run-time integer: a special register (tid, ctaid), a kernel-level `Let`, a loop variable."""
    name: str

    def __str__(self):
        return self.name


@dataclass(frozen=True, eq=True)
class BinOp(Expr):
    op: str
    a: Expr
    b: Expr

    def __str__(self):
        if self.op in ("min", "max", "and", "or"):
            return f"{self.op}({self.a}, {self.b})"
        return f"({self.a} {self.op} {self.b})"


@dataclass(frozen=True, eq=True)
class Const(Expr):
    value: int

    def __str__(self):
        return str(self.value)


@dataclass(frozen=True, eq=True)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr

    def __str__(self):
        return f"({self.cond} ? {self.a} : {self.b})"


def wrap(x: IntLike) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, (int,)) or hasattr(x, "__index__"):
        return Const(int(x))
    raise TypeError(f"not an index expression: {x!r}")


def _const(x):
    """The integer value of a constant operand, or None for a variable / an array."""
    if isinstance(x, Const):
        return x.value
    return int(x) if isinstance(x, int) else None


def _eval_op(op: str, a, b):
    """`a op b` on plain values: Python ints, or numpy integer arrays (one value per thread)."""
    if isinstance(a, int) and isinstance(b, int):
        return _BINOPS[op](a, b)
    import numpy as np
    vec = {"min": np.minimum, "max": np.maximum, "and": np.logical_and, "or": np.logical_or,
           "<": np.less, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal}
    if op in vec:
        r = vec[op](a, b)
        return r.astype(np.int64) if r.dtype == bool else r
    return _BINOPS[op](a, b)


def binop(op: str, a: IntLike, b: IntLike) -> IntLike:
    """Build `a op b`, folding constants and the identities codegen would otherwise emit."""
    if not isinstance(a, Expr) and not isinstance(b, Expr):
        return _eval_op(op, a, b)
    ia, ib = _const(a), _const(b)
    if ia is not None and ib is not None:
        return _BINOPS[op](ia, ib)
    if op == "+":
        if ia == 0:
            return b
        if ib == 0:
            return a
    elif op == "-":
        if ib == 0:
            return a
    elif op == "*":
        if ia == 0 or ib == 0:
            return 0
        if ia == 1:
            return b
        if ib == 1:
            return a
    elif op == "//":
        if ib == 1:
            return a
    elif op == "%":
        if ib == 1:
            return 0
    elif op == "^":
        if ia == 0:
            return b
        if ib == 0:
            return a
    elif op == "and":
        if ia is not None:
            return b if ia else 0
        if ib is not None:
            return a if ib else 0
    elif op == "or":
        if ia is not None:
            return 1 if ia else b
        if ib is not None:
            return 1 if ib else a
    return BinOp(op, wrap(a), wrap(b))


def lt(a, b): return binop("<", a, b)
def min_(a, b): return binop("min", a, b)
def and_(a, b): return binop("and", a, b)


def select(cond: IntLike, a: IntLike, b: IntLike) -> IntLike:
    if not any(isinstance(x, Expr) for x in (cond, a, b)) and not isinstance(cond, int):
        import numpy as np
        return np.where(cond, a, b)
    ic = _const(cond)
    if ic is not None:
        return a if ic else b
    return Select(wrap(cond), wrap(a), wrap(b))


def evaluate(e: IntLike, env: Mapping[str, int]):
    """Value of `e` with variables bound by `env` (ints or numpy integer arrays, broadcast)."""
    if not isinstance(e, Expr):
        return e
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        try:
            return env[e.name]
        except KeyError:
            raise KeyError(f"index variable {e.name!r} is not bound here") from None
    if isinstance(e, Select):
        return select(evaluate(e.cond, env), evaluate(e.a, env), evaluate(e.b, env))
    return _eval_op(e.op, evaluate(e.a, env), evaluate(e.b, env))


def free_vars(e: IntLike) -> set[str]:
    if isinstance(e, Var):
        return {e.name}
    if isinstance(e, BinOp):
        return free_vars(e.a) | free_vars(e.b)
    if isinstance(e, Select):
        return free_vars(e.cond) | free_vars(e.a) | free_vars(e.b)
    return set()



def split_offset(e: IntLike) -> tuple[IntLike, int]:
    """(v, c) with e == v + c and c an int: the constant part of a sum pulled out, so that codegen
    computes v once and folds c into an address's immediate offset.

    Recurses through +, and through - and * by a constant; anything else is an atom."""
    if not isinstance(e, Expr):
        return 0, int(e)
    if isinstance(e, Const):
        return 0, e.value
    if isinstance(e, BinOp):
        if e.op == "+":
            va, ca = split_offset(e.a)
            vb, cb = split_offset(e.b)
            return binop("+", va, vb), ca + cb
        if e.op == "-" and isinstance(e.b, Const):
            va, ca = split_offset(e.a)
            return va, ca - e.b.value
        if e.op == "*" and (isinstance(e.a, Const) or isinstance(e.b, Const)):
            k, x = (e.a.value, e.b) if isinstance(e.a, Const) else (e.b.value, e.a)
            vx, cx = split_offset(x)
            return binop("*", vx, k), cx * k
    return e, 0
