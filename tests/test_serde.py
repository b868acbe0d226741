"""Behaviour of tether._serde: values <-> stored text, call fingerprints, stored errors.

Every class a test stores is defined at module level: stored dataclasses, models, enums
and named tuples record their import path, and classes defined inside a function are
rejected on purpose (see test_class_defined_in_a_function_is_rejected_*). Stored text
crafted by someone else (classes this process lacks, functions, unsigned pickles) is
covered by tests/test_stored_data.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import json
import math
import pathlib
import pickle
import threading
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

import tether
from tether._core import config as _config
from tether._core.serde import (
    MAX_DEPTH,
    dumps,
    error_from_text,
    error_info,
    error_to_text,
    fingerprint,
    loads,
)
from tether.errors import CheckpointError, DivergenceError, ExecutionFailed, SerializationError

# --- module-level types the tests store -------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    address: Address
    tags: list[str] = []


class Meeting(BaseModel):
    title: str
    at: dt.datetime


class Aliased(BaseModel):
    user_id: int = Field(alias="userId")


class Loose(BaseModel):
    payload: Any


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Segment:
    start: Point
    end: Point
    labels: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class FrozenPoint:
    x: float
    y: float


@dataclasses.dataclass
class Tally:
    name: str
    total: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.total = 0


@dataclasses.dataclass
class Connection:
    name: str
    lock: Any


class Pair(NamedTuple):
    left: int
    right: tuple[int, ...]


class Box:
    """A plain class with no JSON form: stored through the pickle fallback."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        return type(other) is Box and other.items == self.items

    __hash__ = None  # type: ignore[assignment]


class Holder:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class Opaque:
    """Default repr: `<test_serde.Opaque object at 0x...>`, different for every instance."""


class NeedsTwo(Exception):
    """Stores one argument in args but needs two to be built: unpickling it fails."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class QuotaExceeded(Exception):
    pass


# --- helpers ----------------------------------------------------------------------------------


def _no_constants(name: str) -> Any:
    raise AssertionError(f"stored text contains the non-JSON constant {name}")


def strict_json(text: str) -> Any:
    """Parse as standard JSON: NaN/Infinity tokens are not JSON."""
    return json.loads(text, parse_constant=_no_constants)


def roundtrip(value: Any, **options: Any) -> Any:
    text = dumps(value, **options)
    assert isinstance(text, str)
    strict_json(text)
    return loads(text)


def same(a: Any, b: Any) -> bool:
    """Equal, with the same type at every node (1 is not True, a tuple is not a list), and
    NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, (set, frozenset)):
        by_value = {x: x for x in b}
        return a == b and all(same(x, by_value[x]) for x in a)
    return bool(a == b)


def raised(exc: BaseException) -> BaseException:
    """The exception with a real traceback attached."""
    try:
        raise exc
    except BaseException as caught:
        return caught


# --- round trips ------------------------------------------------------------------------------

NAN = float("nan")

ROUND_TRIPS = {
    "plain json": {
        "s": "text",
        "i": -3,
        "big": 2**80,
        "f": 1.5,
        "b": True,
        "n": None,
        "l": [1, "two", [3.0, False], {}],
        "unicode": "héllo ✓ 漢字",
    },
    "top-level string": "just a string",
    "top-level list": [1, 2.5, None],
    "nested tuples": (1, (2, (3, "x")), [(4,), ()], ()),
    "tuple inside plain dict": {"point": (1, 2)},
    "int keys": {1: "a", 2: {3: "b"}, -7: None},
    "tuple keys": {(1, 2): "a", ("x", (3,)): [1]},
    "none key": {None: 1, "a": 2},
    "bool and float keys": {True: "t", 2.5: "f"},
    "key named $t": {"$t": "tuple", "v": [1, 2]},
    "nested key named $t": {"outer": [{"$t": "bytes", "v": "AAE="}], "$tag": 1},
    "set": {1, 2, 3},
    "empty set": set(),
    "frozenset": frozenset({"a", "b"}),
    "set of frozensets": {frozenset({1}), frozenset()},
    "bytes": b"\x00\xffabc",
    "empty bytes": b"",
    "bytearray": bytearray(b"xyz\x80"),
    "naive datetime": dt.datetime(2024, 2, 29, 13, 45, 7, 123456),
    "utc datetime": dt.datetime(2024, 1, 1, 0, 0, tzinfo=dt.UTC),
    "offset datetime": dt.datetime(2024, 1, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=5.5))),
    "date": dt.date(1999, 12, 31),
    "time": dt.time(23, 59, 59, 999999),
    "aware time": dt.time(8, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    "timedelta": dt.timedelta(days=-1, seconds=5, microseconds=7),
    "decimal": decimal.Decimal("1.10"),
    "decimal exponent": decimal.Decimal("-1E+3"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "path": pathlib.Path("/srv/data/file.txt"),
    "pure posix path": pathlib.PurePosixPath("rel/dir"),
    "pure windows path": pathlib.PureWindowsPath("C:/Users/x"),
    "enum": Color.BLUE,
    "int enum": Priority.HIGH,
    "enums in a list": [Color.RED, Priority.LOW, 1],
    "nan": NAN,
    "inf": float("inf"),
    "-inf": float("-inf"),
    "nonfinite in containers": {"scores": [1.0, NAN, float("-inf")], "t": (float("inf"),)},
    "model": Person(name="Ada", address=Address(street="1 Main", city="X"), tags=["a"]),
    "model with datetime": Meeting(title="sync", at=dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)),
    "nested dataclass": Segment(Point(0, 1), Point(2, 3), labels=("a", "b")),
    "frozen dataclass": FrozenPoint(1.5, -2.0),
    "namedtuple": Pair(1, (2, 3)),
    "everything together": {
        "points": [Point(1, 2), FrozenPoint(0.0, 0.0)],
        "when": dt.date(2020, 1, 1),
        "raw": b"\x01",
        "ids": {uuid.UUID(int=1): Color.RED},
        "pair": Pair(0, ()),
    },
}


@pytest.mark.parametrize("value", list(ROUND_TRIPS.values()), ids=list(ROUND_TRIPS))
def test_value_round_trips_with_its_exact_type(value: Any) -> None:
    assert same(roundtrip(value), value)


@pytest.fixture
def signed_pickle(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pickle on, with a key: the one setup in which tether pickles and unpickles."""
    monkeypatch.setenv("TETHER_SECRET", "serde-test-key")
    _config.reset()
    tether.configure(pickle=True)
    yield
    _config.reset()


def test_custom_class_round_trips_through_a_signed_pickle(signed_pickle: None) -> None:
    value = Box([1, (2, 3), {"k": b"v"}])
    text = dumps({"box": value})
    assert '"mac"' in text
    assert same(loads(text), {"box": value})


def test_pickle_is_off_by_default() -> None:
    _config.reset()
    try:
        assert _config.settings().pickle is False
        with pytest.raises(SerializationError, match="pickle fallback is off"):
            dumps(Box([1]))
    finally:
        _config.reset()


def test_pickle_on_without_a_key_refuses_to_store_and_says_to_set_tether_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TETHER_SECRET", raising=False)
    _config.reset()
    tether.configure(pickle=True)
    try:
        with pytest.raises(SerializationError, match="TETHER_SECRET") as info:
            dumps({"box": Box([1])}, root="result")
        assert info.value.path == "result['box']"
    finally:
        _config.reset()


@pytest.mark.parametrize("value", list(ROUND_TRIPS.values()), ids=list(ROUND_TRIPS))
def test_stored_text_is_always_standard_json(value: Any) -> None:
    assert isinstance(strict_json(dumps(value)), (dict, list, str, int, float, type(None)))


def test_dict_with_a_key_named_like_the_tag_stays_a_dict() -> None:
    value = {"$t": "tuple", "v": [1, 2]}
    back = roundtrip(value)
    assert type(back) is dict
    assert back == value


def test_aware_datetime_keeps_its_utc_offset() -> None:
    value = dt.datetime(2024, 1, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    back = roundtrip(value)
    assert back.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert back.replace(tzinfo=None) == value.replace(tzinfo=None)
    naive = roundtrip(dt.datetime(2024, 1, 1, 9, 30))
    assert naive.tzinfo is None


def test_decimal_keeps_its_exact_digits() -> None:
    assert str(roundtrip(decimal.Decimal("1.10"))) == "1.10"
    assert str(roundtrip(decimal.Decimal("0E-7"))) == "0E-7"


def test_nonfinite_floats_round_trip() -> None:
    assert math.isnan(roundtrip(NAN))
    assert roundtrip(float("inf")) == float("inf")
    assert roundtrip(float("-inf")) == float("-inf")


def test_int_enum_comes_back_as_the_enum_member_not_an_int() -> None:
    back = roundtrip({"p": Priority.HIGH})
    assert back["p"] is Priority.HIGH


def test_model_fields_come_back_as_their_types() -> None:
    value = Meeting(title="sync", at=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC))
    back = roundtrip(value)
    assert type(back) is Meeting
    assert type(back.at) is dt.datetime
    assert back.at == value.at
    person = roundtrip(Person(name="Ada", address=Address(street="s", city="c")))
    assert type(person.address) is Address


def test_dataclass_field_not_in_init_keeps_its_stored_value() -> None:
    tally = Tally("votes")
    tally.total = 41
    back = roundtrip(tally)
    assert type(back) is Tally
    assert (back.name, back.total) == ("votes", 41)


def test_nested_dataclass_fields_keep_their_types() -> None:
    back = roundtrip(Segment(Point(0, 1), Point(2, 3), labels=("a",)))
    assert type(back.start) is Point
    assert type(back.labels) is tuple


def test_namedtuple_comes_back_as_its_class() -> None:
    back = roundtrip(Pair(1, (2, 3)))
    assert type(back) is Pair
    assert back.right == (2, 3)
    assert type(back.right) is tuple


def test_plain_values_survive_with_pickle_switched_off() -> None:
    value = {
        "p": Point(1, 2),
        "t": (1,),
        "m": Person(name="a", address=Address(street="", city="")),
    }
    assert same(roundtrip(value, allow_pickle=False), value)


def test_shared_references_that_are_not_circular_are_stored() -> None:
    shared = [1, 2]
    assert roundtrip({"a": shared, "b": (shared, shared)}) == {"a": [1, 2], "b": ([1, 2], [1, 2])}


def test_deeply_nested_plain_value_round_trips() -> None:
    value: Any = "leaf"
    for _ in range(MAX_DEPTH):  # the most tether stores (tests/test_limits.py)
        value = [value]
    assert roundtrip(value) == value


def test_model_with_a_field_alias_round_trips() -> None:
    value = Aliased(userId=7)
    assert roundtrip(value) == value


def test_model_field_typed_any_keeps_a_tuple() -> None:
    back = roundtrip(Loose(payload=(1, 2)))
    assert type(back.payload) is tuple


def test_string_with_a_lone_surrogate_is_escaped_or_rejected() -> None:
    value = {"file": "caf\udce9.txt"}
    try:
        text = dumps(value)
    except SerializationError:
        return
    text.encode("utf-8")
    assert loads(text) == value


# --- values that cannot be stored -------------------------------------------------------------


def test_class_defined_in_a_function_is_rejected_with_module_level_advice() -> None:
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(SerializationError, match="module level") as info:
        dumps({"v": Local(1)}, root="result")
    assert info.value.path == "result['v']"


def test_model_defined_in_a_function_is_rejected_with_module_level_advice() -> None:
    class LocalModel(BaseModel):
        x: int

    with pytest.raises(SerializationError, match="module level"):
        dumps(LocalModel(x=1))


def test_unpicklable_attribute_error_names_its_path_and_type(signed_pickle: None) -> None:
    lock = threading.Lock()
    value = {"items": [0, 1, 2, Holder(client=lock)]}
    with pytest.raises(SerializationError) as info:
        dumps(value, root="result")
    error = info.value
    lock_type = f"{type(lock).__module__}.{type(lock).__qualname__}"
    assert error.path == "result['items'][3].client"
    assert error.type_name == lock_type
    assert "result['items'][3].client" in str(error)
    assert lock_type in str(error)


async def _fetch() -> int:
    return 1


@pytest.mark.parametrize("allow_pickle", [True, False])
def test_a_coroutine_where_a_value_belongs_asks_about_a_missing_await(
    allow_pickle: bool, signed_pickle: None
) -> None:
    pending = _fetch()
    try:
        with pytest.raises(SerializationError) as info:
            dumps({"page": pending}, allow_pickle=allow_pickle, root="result")
        assert info.value.path == "result['page']"
        assert "did you forget `await`?" in str(info.value)
        assert "coroutine of '_fetch'" in str(info.value)
        assert "await _fetch(...)" in str(info.value)
        # Inside an object that is pickled as a whole, the coroutine is found and named too.
        with pytest.raises(SerializationError) as info:
            dumps(Holder(client=pending), allow_pickle=True, root="result")
        assert info.value.path == "result.client"
        assert "did you forget `await`?" in str(info.value)
    finally:
        pending.close()  # never awaited, on purpose


def test_dataclass_field_holding_a_lock_is_named_in_the_error() -> None:
    with pytest.raises(SerializationError) as info:
        dumps([Connection("db", threading.Lock())], root="result")
    assert info.value.path == "result[0].lock"
    assert "result[0].lock" in str(info.value)


def test_error_path_uses_the_default_root_when_none_is_given(signed_pickle: None) -> None:
    with pytest.raises(SerializationError) as info:
        dumps(Connection("db", threading.Lock()))
    assert info.value.path.endswith(".lock")


@pytest.mark.parametrize("kind", ["list", "dict", "dataclass"])
def test_circular_value_is_rejected(kind: str) -> None:
    value: Any
    if kind == "list":
        value = [1]
        value.append(value)
    elif kind == "dict":
        value = {"a": 1}
        value["self"] = value
    else:
        value = Connection("c", None)
        value.lock = [value]
    with pytest.raises(SerializationError, match="circular"):
        dumps(value)


def test_custom_object_with_pickle_off_says_how_to_enable_pickle() -> None:
    with pytest.raises(SerializationError) as info:
        dumps({"box": Box([1])}, allow_pickle=False, root="result")
    assert info.value.path == "result['box']"
    assert "pickle=True" in str(info.value)
    assert "Box" in str(info.value)


def test_serialization_error_is_a_tether_error() -> None:
    from tether.errors import TetherError

    with pytest.raises(TetherError):
        dumps(threading.Lock())


# --- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_is_stable_for_the_same_arguments() -> None:
    args = (1, "a", [1, 2], Point(1, 2), Person(name="x", address=Address(street="", city="")))
    kwargs = {"k": {"x": (1, 2)}, "when": dt.date(2024, 1, 1)}
    first = fingerprint(args, kwargs)
    assert first == fingerprint(args, kwargs)
    assert isinstance(first, str)
    assert first


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (((1,), {}), ((2,), {})),
        ((("1",), {}), ((1,), {})),
        (((1,), {}), ((), {"x": 1})),
        (((), {"x": 1}), ((), {"x": 2})),
        (((), {"x": 1}), ((), {"y": 1})),
        (((), {"x": 1}), ((), {"x": 1, "y": 2})),
        (((Point(1, 2),), {}), ((Point(1, 3),), {})),
        (((Color.RED,), {}), ((Color.BLUE,), {})),
        (((True,), {}), ((1,), {})),
    ],
    ids=[
        "positional value",
        "str vs int",
        "positional vs keyword",
        "keyword value",
        "keyword name",
        "extra keyword",
        "dataclass field",
        "enum member",
        "bool vs int",
    ],
)
def test_fingerprint_differs_for_different_arguments(
    a: tuple[tuple[Any, ...], dict[str, Any]], b: tuple[tuple[Any, ...], dict[str, Any]]
) -> None:
    assert fingerprint(*a) != fingerprint(*b)


@pytest.mark.parametrize(
    "args",
    [
        *[(), (12,), ("é \ud800 \x00 \U0001f600",), (1.5,), (None,), (True, "two", 3.0)],
        (10**30,),
        # Two arguments, written out without the tuple's repr (see `fingerprint`).
        *[(7, 3), ("it's \ud800", -0.0), (None, False), (float("nan"), "x\ny")],
    ],
)
def test_fingerprint_of_scalar_arguments_is_the_stored_format(args: tuple[Any, ...]) -> None:
    # What executions recorded by earlier versions hold: a resume compares against it, so a
    # change here would flag every recorded call as called with other arguments.
    expected = hashlib.blake2b(repr(args).encode("utf-8", "surrogatepass"), digest_size=8)
    assert fingerprint(args, {}) == expected.hexdigest()


def test_fingerprint_ignores_keyword_order() -> None:
    assert fingerprint((), {"a": 1, "b": [2], "c": None}) == fingerprint(
        (), {"c": None, "b": [2], "a": 1}
    )


def test_fingerprint_ignores_memory_addresses_in_default_reprs() -> None:
    first, second = Opaque(), Opaque()  # both alive: different addresses
    assert fingerprint((first,), {"o": [first]}) == fingerprint((second,), {"o": [second]})


def test_fingerprint_ignores_memory_addresses_inside_a_set() -> None:
    first, second = Opaque(), Opaque()
    assert fingerprint(({first},), {}) == fingerprint(({second},), {})


def test_fingerprint_ignores_memory_addresses_in_a_dict_with_tuple_keys() -> None:
    first, second = Opaque(), Opaque()
    assert fingerprint(({(1, 2): first},), {}) == fingerprint(({(1, 2): second},), {})


def test_fingerprint_sees_keyword_values_that_json_cannot_encode() -> None:
    assert fingerprint((), {"x": {(1, 2): "a"}}) != fingerprint((), {"x": {(1, 2): "b"}})


# --- stored errors ----------------------------------------------------------------------------


def test_builtin_error_round_trips_as_its_type_with_its_message() -> None:
    text = error_to_text(raised(ValueError("bad value 42")))
    strict_json(text)
    assert "pickle" not in json.loads(text)
    back = error_from_text(text)
    assert type(back) is ValueError
    assert str(back) == "bad value 42"


def test_module_level_custom_error_round_trips_as_its_type() -> None:
    back = error_from_text(error_to_text(raised(QuotaExceeded("over", 3))))
    assert type(back) is QuotaExceeded
    assert back.args == ("over", 3)


def test_error_whose_init_wants_other_arguments_is_rebuilt_from_its_stored_attributes() -> None:
    back = error_from_text(error_to_text(raised(NeedsTwo("quota gone", 429))))
    assert type(back) is NeedsTwo
    assert str(back) == "quota gone"
    assert back.code == 429


def test_error_that_cannot_be_rebuilt_comes_back_as_checkpoint_error() -> None:
    # NeedsTwo's __init__ fails with the stored args, and an attribute (a lock) was not
    # stored: building it without __init__ would give a half-made object, so it is not.
    error = NeedsTwo("quota gone", 429)
    error.lock = threading.Lock()  # type: ignore[attr-defined]
    back = error_from_text(error_to_text(raised(error)))
    assert isinstance(back, CheckpointError)
    assert back.error_type.endswith("NeedsTwo")
    assert back.type_name == back.error_type
    assert back.message == "quota gone"
    assert "NeedsTwo" in str(back)
    assert "quota gone" in str(back)
    assert "Traceback" in back.traceback


def test_error_info_gives_type_message_and_traceback() -> None:
    info = error_info(error_to_text(raised(KeyError("missing"))))
    assert set(info) == {"type", "message", "traceback"}
    assert info["type"] == "KeyError"
    assert info["message"] == "'missing'"
    assert info["traceback"].startswith("Traceback")
    assert "KeyError: 'missing'" in info["traceback"]
    assert all(isinstance(v, str) for v in info.values())


def test_error_info_names_custom_types_with_their_module() -> None:
    info = error_info(error_to_text(raised(NeedsTwo("m", 1))))
    assert info["type"] == f"{NeedsTwo.__module__}.NeedsTwo"
    assert info["message"] == "m"


def test_chained_error_traceback_mentions_the_cause() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as exc:
        text = error_to_text(exc)
    tb_text = error_info(text)["traceback"]
    assert "KeyError: 'inner'" in tb_text
    assert "RuntimeError: outer" in tb_text


TETHER_ERRORS = {
    "serialization": (
        SerializationError("cannot store x", path="result.x", type_name="_thread.lock"),
        {"path": "result.x", "type_name": "_thread.lock"},
    ),
    "divergence": (
        DivergenceError(3, "search", "fetch"),
        {"position": 3, "recorded": "search", "current": "fetch"},
    ),
    "divergence with detail": (
        DivergenceError(1, "a", "b", "custom detail"),
        {"position": 1, "recorded": "a", "current": "b"},
    ),
    "execution failed": (
        ExecutionFailed("ex-1", "ValueError", "bad", "Traceback ..."),
        {"execution_id": "ex-1", "error_type": "ValueError", "message": "bad"},
    ),
    "checkpoint error": (
        CheckpointError("pkg.Custom", "went wrong", "Traceback ..."),
        {"error_type": "pkg.Custom", "message": "went wrong", "traceback": "Traceback ..."},
    ),
}


@pytest.mark.parametrize(("error", "fields"), list(TETHER_ERRORS.values()), ids=list(TETHER_ERRORS))
def test_tether_errors_survive_pickle_with_their_fields(
    error: Exception, fields: dict[str, Any]
) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    for name, value in fields.items():
        assert getattr(back, name) == value


@pytest.mark.parametrize(("error", "fields"), list(TETHER_ERRORS.values()), ids=list(TETHER_ERRORS))
def test_tether_errors_survive_being_stored_as_text(
    error: Exception, fields: dict[str, Any]
) -> None:
    back = error_from_text(error_to_text(raised(error)))
    assert type(back) is type(error)
    assert str(back) == str(error)
    for name, value in fields.items():
        assert getattr(back, name) == value


# --- property: anything built from the supported kinds round trips ----------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=16)
    | st.sets(st.integers(), max_size=5)
    | st.frozensets(st.integers(), max_size=5)
)
_keys = st.text(max_size=5) | st.sampled_from(["$t", "v", "c"])
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(_keys, children, max_size=4)
        | st.dictionaries(st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_values)
def test_any_supported_value_round_trips_with_every_node_typed(value: Any) -> None:
    text = dumps(value, allow_pickle=False)
    strict_json(text)
    assert same(loads(text), value)


# --- what a stored name may stand for (crafted rows: tests/test_stored_data.py) ----------------


def test_a_tag_naming_a_class_of_another_kind_comes_back_as_data() -> None:
    text = json.dumps({"$t": "enum", "c": f"{__name__}:Point", "v": {"x": 1, "y": 2}})
    back = loads(text)
    assert back == tether.StoredValue(f"{__name__}:Point", {"x": 1, "y": 2}, "enum")


def test_a_stored_value_is_stored_again_in_its_original_form() -> None:
    original = {"$t": "model", "c": "nowhere.models:Verdict", "v": {"ok": True, "at": (1, 2)}}
    original["v"]["at"] = {"$t": "tuple", "v": [1, 2]}
    back = loads(json.dumps(original))
    assert back == tether.StoredValue("nowhere.models:Verdict", {"ok": True, "at": (1, 2)}, "model")
    assert json.loads(dumps({"kept": back})) == {"kept": original}


def test_register_rejects_what_is_not_a_restorable_class() -> None:
    with pytest.raises(tether.UsageError, match=r"tether.register\(\) takes a dataclass"):
        tether.register(print)  # type: ignore[arg-type]
    with pytest.raises(tether.UsageError, match=r"tether\.register"):
        tether.register(Box)
    assert tether.register(Point) is Point


def test_an_error_row_cannot_raise_system_exit_or_a_control_signal() -> None:
    for error in (SystemExit(3), KeyboardInterrupt(), tether.Cancelled()):
        back = error_from_text(error_to_text(raised(error)))
        assert isinstance(back, CheckpointError), back


def test_an_error_row_of_an_older_version_is_rebuilt_from_its_type_name_and_message() -> None:
    old = {"type": f"{__name__}.QuotaExceeded", "message": "over", "traceback": "T", "pickle": "x"}
    back = error_from_text(json.dumps(old))
    assert type(back) is QuotaExceeded
    assert back.args == ("over",)


def test_an_os_error_keeps_its_filename_through_the_store() -> None:
    back = error_from_text(error_to_text(raised(FileNotFoundError(2, "No such file", "a.txt"))))
    assert type(back) is FileNotFoundError
    assert (back.errno, back.filename) == (2, "a.txt")
