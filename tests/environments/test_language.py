"""The Python real models write runs in SandboxREPL as in CPython.

Each snippet runs in the sandbox and, with plain ``exec`` in a fresh namespace,
in this process (the snippets are ours); stdout must be the same.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from loopagent.environments import SandboxREPL

SNIPPETS = {
    "inheritance_super_zero_arg": """
class Animal:
    def __init__(self, name):
        self.name = name
    def speak(self):
        return f"{self.name} makes a sound"
class Dog(Animal):
    def __init__(self, name, breed):
        super().__init__(name)
        self.breed = breed
    def speak(self):
        return super().speak() + " (woof)"
d = Dog("Rex", "lab")
print(d.speak(), d.breed, isinstance(d, Animal))
""",
    "super_two_arg_and_mro": """
class A:
    def who(self):
        return ["A"]
class B(A):
    def who(self):
        return ["B"] + super(B, self).who()
class C(A):
    def who(self):
        return ["C"] + super().who()
class D(B, C):
    def who(self):
        return ["D"] + super().who()
print(D().who(), [k.__name__ for k in D.mro()])
""",
    "augmented_assignment_targets": """
class Counter:
    def __init__(self):
        self.count = 0
        self.items = [10, 20, 30]
        self._hidden = {"a": 1}
    def bump(self):
        self.count += 1
        self.items[1] -= 2
        self._hidden["a"] *= 7
        return self
c = Counter().bump().bump()
d = {"k": 1}
d["k"] += 5
grid = [[0] * 3 for _ in range(2)]
grid[1][2] += 4
xs = [1, 2, 3, 4]
xs[1:3] += [9]
s = "a"
s += "b"
print(c.count, c.items, c._hidden, d, grid, xs, s)
""",
    "special_methods": """
class Vec:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __repr__(self):
        return f"Vec({self.x}, {self.y})"
    def __str__(self):
        return f"<{self.x},{self.y}>"
    def __eq__(self, other):
        return isinstance(other, Vec) and (self.x, self.y) == (other.x, other.y)
    def __hash__(self):
        return hash((self.x, self.y))
    def __lt__(self, other):
        return (self.x, self.y) < (other.x, other.y)
    def __add__(self, other):
        return Vec(self.x + other.x, self.y + other.y)
    def __mul__(self, k):
        return Vec(self.x * k, self.y * k)
    __rmul__ = __mul__
    def __neg__(self):
        return Vec(-self.x, -self.y)
    def __abs__(self):
        return (self.x ** 2 + self.y ** 2) ** 0.5
    def __bool__(self):
        return bool(self.x or self.y)
    def __len__(self):
        return 2
    def __iter__(self):
        yield self.x
        yield self.y
    def __getitem__(self, i):
        return (self.x, self.y)[i]
    def __contains__(self, v):
        return v in (self.x, self.y)
    def __call__(self, k):
        return self * k
    def __format__(self, spec):
        return f"V[{format(self.x, spec)}]"
a, b = Vec(1, 2), Vec(3, 4)
print(a + b, repr(a), str(b), a == Vec(1, 2), a < b, sorted([b, a]), 2 * a, -a, abs(b))
print(bool(Vec(0, 0)), len(a), list(a), a[1], 2 in a, a(3), {a, Vec(1, 2)}, f"{a:>4}", f"{a!r}", f"{a!s}")
""",
    "container_protocol": """
class Bag:
    def __init__(self):
        self._data = {}
    def __setitem__(self, k, v):
        self._data[k] = v
    def __getitem__(self, k):
        return self._data[k]
    def __delitem__(self, k):
        del self._data[k]
    def __len__(self):
        return len(self._data)
    def __iter__(self):
        return iter(sorted(self._data))
    def __contains__(self, k):
        return k in self._data
class Defaults(dict):
    def __missing__(self, key):
        return key.upper()
b = Bag()
b["x"] = 1
b["y"] = 2
del b["x"]
print(len(b), list(b), "y" in b, b["y"], Defaults(a=1)["zz"])
""",
    "iterator_protocol": """
class Countdown:
    def __init__(self, n):
        self.n = n
    def __iter__(self):
        return self
    def __next__(self):
        if self.n <= 0:
            raise StopIteration
        self.n -= 1
        return self.n + 1
print(list(Countdown(3)), sum(Countdown(4)))
""",
    "context_manager": """
class Timer:
    def __init__(self, log):
        self.log = log
    def __enter__(self):
        self.log.append("enter")
        return self
    def __exit__(self, exc_type, exc, tb):
        self.log.append(f"exit {exc_type.__name__ if exc_type else None}")
        return exc_type is ValueError
log = []
with Timer(log) as t:
    log.append("body")
with Timer(log):
    raise ValueError("swallowed")
print(log, t.log is log)
""",
    "dunder_reads_on_own_objects": """
class Shape:
    def describe(self):
        return f"{self.__class__.__name__}({self.__dict__})"
    @classmethod
    def make(cls):
        return cls.__name__, cls.__qualname__
class Square(Shape):
    def __init__(self, side):
        self.side = side
s = Square(2)
print(s.describe(), Square.make(), type(s).__name__, Square.__init__ is not Shape.__init__)
s.__dict__.update(color="red")
print(s.color, sorted(s.__dict__))
""",
    "init_subclass_and_class_getitem": """
registry = []
class Plugin:
    def __init_subclass__(cls, key="", **kw):
        super().__init_subclass__(**kw)
        registry.append((cls.__name__, key))
    def __class_getitem__(cls, item):
        return f"{cls.__name__}[{item}]"
class A(Plugin, key="a"):
    pass
class B(Plugin):
    pass
print(registry, Plugin[int.__name__])
""",
    "descriptors_and_set_name": """
class Field:
    def __set_name__(self, owner, name):
        self.name = "_" + name
    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(obj, self.name, 0)
    def __set__(self, obj, value):
        setattr(obj, self.name, value * 2)
class Model:
    x = Field()
m = Model()
m.x = 5
print(m.x, m._x, Model.x.name)
""",
    "getattr_proxy": """
class Proxy:
    def __init__(self, target):
        self._target = target
    def __getattr__(self, name):
        return getattr(self._target, name)
p = Proxy([3, 1, 2])
print(p.count(1), p.index(2))
""",
    "private_and_mangled_names": """
_cache = {}
def _helper(x):
    return x * 2
class Account:
    def __init__(self):
        self.__balance = 10
        self._log = []
    def deposit(self, n):
        self.__balance += n
        self._log.append(n)
        return self.__balance
    def __secret(self):
        return "s"
    def peek(self):
        return self.__secret(), self._Account__balance
a = Account()
for _ in range(2):
    a.deposit(_helper(5))
_cache["k"] = a._log
print(a.peek(), _cache, _)
""",
    "nonlocal_and_closures": """
def make_counter():
    count = 0
    def inc(step=1):
        nonlocal count
        count += step
        return count
    return inc
c = make_counter()
c()
c(5)
adders = [lambda x, i=i: x + i for i in range(3)]
print(c(), [f(10) for f in adders])
""",
    "global_in_repl_namespace": """
total = 0
def add(n):
    global total
    total += n
add(3)
add(4)
print(total)
""",
    "match_statements": """
from dataclasses import dataclass
@dataclass
class Point:
    x: int
    y: int
class Circle:
    __match_args__ = ("r",)
    def __init__(self, r):
        self.r = r
def describe(obj):
    match obj:
        case Point(x=0, y=0):
            return "origin"
        case Point(x, y) if x == y:
            return f"diag {x}"
        case Point(x=x, y=_):
            return f"point x={x}"
        case Circle(r):
            return f"circle {r}"
        case {"type": "user", "name": str(name), **rest}:
            return f"user {name} {rest}"
        case [first, *others]:
            return f"seq {first} {others}"
        case int() | float() as num if num > 100:
            return "big"
        case "a" | "b":
            return "letter"
        case None:
            return "none"
        case _:
            return "other"
for item in [Point(0, 0), Point(2, 2), Point(1, 5), Circle(3), {"type": "user", "name": "ann", "age": 3},
             [1, 2, 3], 500, "b", None, 7]:
    print(describe(item))
""",
    "match_enum_values": """
import enum
class Color(enum.Enum):
    RED = 1
    GREEN = 2
def name(c):
    match c:
        case Color.RED:
            return "red"
        case Color():
            return "another color"
print(name(Color.RED), name(Color.GREEN))
""",
    "generators_and_yield_from": """
def inner():
    received = yield 1
    yield received * 2
    return "done"
def outer():
    result = yield from inner()
    yield result
g = outer()
print(next(g), g.send(21), next(g))
def fib():
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b
import itertools
print(list(itertools.islice(fib(), 8)), sum(x * x for x in range(5)))
""",
    "lambdas_comprehensions_walrus": """
data = [3, 8, 1, 9, 4]
print(sorted(data, key=lambda v: -v), {v: v % 3 for v in data}, {v % 2 for v in data})
print([y for v in data if (y := v * 2) > 6], [(i, j) for i in range(3) for j in range(i)])
if (n := len(data)) > 3:
    print("n =", n)
""",
    "fstrings_and_format": """
pi = 3.14159
name = "Ada"
width = 8
print(f"{name!r} {name!s:>6} {pi:.2f} {pi:{width}.3f} {42:#x} {1234567:,} {'x'!a} {pi=}")
print("{0} {name} {0:>3}".format(7, name=name), "{a[0]} {b.real}".format(a=[1], b=2), "%s-%d" % ("a", 5))
""",
    "decorators": """
import functools
class Temperature:
    def __init__(self, c):
        self._c = c
    @property
    def f(self):
        return self._c * 9 / 5 + 32
    @f.setter
    def f(self, value):
        self._c = (value - 32) * 5 / 9
    @staticmethod
    def unit():
        return "C"
    @classmethod
    def freezing(cls):
        return cls(0)
t = Temperature(100)
t.f = 212
calls = []
@functools.lru_cache(maxsize=None)
def slow(n):
    calls.append(n)
    return n * n
slow(3)
slow(3)
def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return ("logged", fn(*args, **kwargs))
    return wrapper
@logged
def double(x):
    "Double x."
    return 2 * x
print(t.f, t._c, Temperature.unit(), Temperature.freezing().f, calls, double(4), double.__name__, double.__doc__)
@functools.total_ordering
class Version:
    def __init__(self, n):
        self.n = n
    def __eq__(self, o):
        return self.n == o.n
    def __lt__(self, o):
        return self.n < o.n
print(Version(1) <= Version(2), Version(3) >= Version(4), functools.partial(pow, 2)(5))
""",
    "dataclasses": """
import dataclasses
from dataclasses import dataclass, field
@dataclass(order=True)
class Item:
    name: str
    qty: int = 0
    tags: list = field(default_factory=list)
    def __post_init__(self):
        self.name = self.name.strip()
@dataclass(frozen=True)
class Pair:
    a: int
    b: "int"
i = Item(" apple ", 3)
j = dataclasses.replace(i, qty=5)
print(i, i < j, dataclasses.asdict(j), dataclasses.astuple(i), [f.name for f in dataclasses.fields(Item)])
p = Pair(1, 2)
try:
    p.a = 5
except dataclasses.FrozenInstanceError as e:
    print("frozen", type(e).__name__)
print(p, hash(p) == hash(Pair(1, 2)), dataclasses.is_dataclass(p))
""",
    "typing_annotations": """
from __future__ import annotations
import typing
from typing import Optional, NamedTuple, TypedDict, Protocol, TypeVar, Generic
T = TypeVar("T")
class Stack(Generic[T]):
    def __init__(self) -> None:
        self.items: list[T] = []
    def push(self, item: T) -> None:
        self.items.append(item)
class P(NamedTuple):
    x: int
    y: int = 0
class Movie(TypedDict):
    title: str
class HasLen(Protocol):
    def __len__(self) -> int: ...
def first(xs: list[int], default: Optional[int] = None) -> int | None:
    return xs[0] if xs else default
count: int = 3
s: Stack[int] = Stack()
s.push(count)
print(first([]), first([4]), s.items, P(1), P(1)._replace(y=5), Movie(title="x"), typing.cast(int, "5"))
print(P._fields, P(2, 3)._asdict(), typing.get_origin(list[int]) is list, typing.get_args(dict[str, int]) == (str, int))
""",
    "enum_module": """
import enum
class Color(enum.Enum):
    RED = 1
    GREEN = enum.auto()
class Perm(enum.IntFlag):
    R = 4
    W = 2
Shape = enum.Enum("Shape", "CIRCLE SQUARE")
print(Color.RED, Color(2), Color["GREEN"].value, [c.name for c in Color], list(Color.__members__))
print(Perm.R | Perm.W, int(Perm.R | Perm.W), Shape.SQUARE.value, Color.RED in Color)
""",
    "abc_and_numbers": """
import abc, numbers
class Base(abc.ABC):
    @abc.abstractmethod
    def area(self):
        ...
class Sq(Base):
    def __init__(self, s):
        self.s = s
    def area(self):
        return self.s ** 2
try:
    Base()
except TypeError:
    print("abstract")
print(Sq(3).area(), isinstance(3, numbers.Number), isinstance(1.5, numbers.Integral))
""",
    "exceptions": """
class AppError(Exception):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code
    def __str__(self):
        return f"[{self.code}] {self.args[0]}"
try:
    try:
        raise AppError(7, "bad")
    except AppError as e:
        raise KeyError("wrapped") from e
except KeyError as e:
    print("caught", e)
try:
    raise AppError(1, "x")
except Exception as e:
    print(str(e), repr(e.code), type(e).__name__)
finally:
    print("finally")
""",
    "more_modules": """
import operator, copy, pprint, array, struct, string, unicodedata, shlex, graphlib, secrets, uuid, contextlib
from operator import attrgetter, itemgetter, methodcaller
class P:
    def __init__(self, name, age):
        self.name, self.age = name, age
people = [P("b", 30), P("a", 25)]
print([p.name for p in sorted(people, key=attrgetter("age"))], itemgetter(1)([5, 6]),
      methodcaller("upper")("hi"), operator.add(2, 3), attrgetter("name", "age")(people[0]))
nested = {"a": [1, [2, 3]]}
deep = copy.deepcopy(nested)
deep["a"][1].append(4)
shallow = copy.copy(people[0])
print(nested, deep, shallow.name, shallow is not people[0])
pprint.pprint({"z": list(range(3)), "a": {"b": 1}})
print(array.array("i", [1, 2, 3]).tolist(), struct.unpack("<HH", struct.pack("<HH", 1, 2)),
      string.capwords("hello world"), unicodedata.name("a"), shlex.split("a 'b c'"), shlex.quote("x y"))
ts = graphlib.TopologicalSorter({"b": {"a"}, "c": {"b"}})
print(list(ts.static_order()), len(secrets.token_hex(4)), uuid.UUID(int=5).hex[-2:], len(str(uuid.uuid4())))
@contextlib.contextmanager
def tag(name):
    print("<" + name + ">")
    yield name
    print("</" + name + ">")
with tag("b") as t, contextlib.suppress(KeyError):
    print(t)
    {}["missing"]
with contextlib.ExitStack() as stack:
    stack.callback(print, "cleanup")
    print("in stack")
""",
    "slots_hash_none_class_attrs": """
class Point:
    __slots__ = ("x", "y")
    def __init__(self, x, y):
        self.x = x
        self.y = y
class Unhashable:
    __hash__ = None
    count = 0
    def __init__(self):
        Unhashable.count += 1
Unhashable()
Unhashable()
p = Point(1, 2)
p.x += 10
print(p.x, p.y, Unhashable.count, Unhashable.__hash__ is None)
""",
    "builtin_new_called_by_name_in_subclasses": """
import enum
class Money(float):
    def __new__(cls, value):
        return float.__new__(cls, round(value, 2))
class Tag(str):
    def __new__(cls, s):
        return str.__new__(cls, s.lower())
class Pair(tuple):
    def __new__(cls, a, b):
        return tuple.__new__(cls, (a, b))
class Code(int, enum.Enum):
    OK = (200, "fine")
    def __new__(cls, value, label):
        obj = int.__new__(cls, value)
        obj._value_ = value
        obj.label = label
        return obj
class Blank:
    def __init__(self):
        raise RuntimeError("not called")
b = object.__new__(Blank)
print(Money(2.345), Tag("ABC"), Pair(1, 2), Code.OK.label, Code(200).name, type(b).__name__)
""",
}


def _cpython_stdout(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<snippet>", "exec", dont_inherit=True), {})
    return out.getvalue()


@pytest.fixture(scope="module")
def repl():
    with SandboxREPL(timeout_s=20) as r:
        yield r


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_snippet_runs_like_cpython(repl, name):
    code = SNIPPETS[name].lstrip("\n")
    expected = _cpython_stdout(code)
    res = repl.execute(code)
    assert res.error is None, res.error
    assert res.stdout == expected


@pytest.mark.parametrize("code", [
    "async def f():\n    return 1\n",
    "async def f():\n    await g()\n",
])
def test_async_is_refused_with_a_clear_message(repl, code):
    res = repl.execute(code)
    assert res.error_type == "PolicyViolation"
    assert "no event loop" in res.error


def test_except_star_stays_refused(repl):
    res = repl.execute("try:\n    pass\nexcept* ValueError:\n    pass\n")
    assert res.error_type == "PolicyViolation"


@pytest.mark.parametrize("code", ["import json\nobject.__new__(json.JSONEncoder)\n", "object.__new__(int)\n",
                                  "int.__new__(bool, 1)\n", "str.__new__(str, 'a')\n"])
def test_builtin_new_makes_classes_of_the_sandbox_only(repl, code):
    res = repl.execute(code)
    assert res.error is not None and "takes a class defined in the sandbox" in res.error, res.error


def test_trailing_expression_of_own_repr(repl):
    res = repl.execute("class R:\n    def __repr__(self):\n        return 'R!'\nR()")
    assert res.error is None, res.error
    assert res.stdout == "R!\n"


def test_print_as_a_value_in_the_trailing_expression(repl):
    """`print` not called but used as a value in the last line (shown like a notebook)."""
    res = repl.execute("x = 1\ncallable(print)")
    assert res.error is None, res.error
    assert res.stdout == "True\n"
    res = repl.execute("list(map(print, ['a', 'b']))")
    assert res.error is None and res.stdout == "a\nb\n[None, None]\n"
