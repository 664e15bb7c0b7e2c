"""Typed protocol messages (fencevol/protocol/): every message type round-trips
through its wire form, a wrong-typed field is a one-line error naming the
operation and the field, and every operation's types match the server's handler
table."""

import dataclasses
import types
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fencevol.errors import InvalidArgument
from fencevol.protocol import messages
from fencevol.protocol.messages import Message

json_leaf = st.none() | st.booleans() | st.integers(-(1 << 63), 1 << 63) | st.text(max_size=8)
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3)
                          | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)


def strategy(tp):
    if tp is typing.Any:
        return json_value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[st.none() if a is type(None) else strategy(a) for a in args])
    if isinstance(tp, type) and issubclass(tp, Message):
        return instances(tp)
    if origin is list:
        return st.lists(strategy(args[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), strategy(args[1]), max_size=3)
    return {str: st.text(max_size=16) | st.sampled_from(["data", "coordinator", "dg/v"]), bool: st.booleans(), int: st.integers(0, (1 << 64) - 1),
            float: st.floats(0, 1e6)}[tp]


def message_types():
    return sorted({getattr(messages, n) for n in messages.__all__
                   if isinstance(getattr(messages, n), type) and issubclass(getattr(messages, n), Message)
                   and getattr(messages, n) is not Message}, key=lambda c: c.__name__)


def valid(msg) -> bool:
    try:
        msg.check()
        return True
    except InvalidArgument:
        return False


def instances(cls):
    """Messages of ``cls`` that pass its own cross-field check."""
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy(hints[f.name])
                             for f in dataclasses.fields(cls)}).filter(valid)


WRONG = {str: 7, bool: "yes", int: "1", float: "x", dict: [1], list: "x"}


@pytest.mark.parametrize("cls", message_types(), ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_message_round_trips_and_names_a_bad_field(cls, data):
    msg = data.draw(instances(cls))
    assert cls.from_wire(msg.to_wire()) == msg
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    field = data.draw(st.sampled_from(fields)) if fields else None
    tp = hints[field.name] if field else None
    base = typing.get_origin(tp) or tp
    if field and base in WRONG:
        with pytest.raises(InvalidArgument, match=field.name):
            cls.from_wire(msg.to_wire() | {field.name: WRONG[base]})
    if cls.KIND == "request":
        with pytest.raises(InvalidArgument, match="unknown argument 'forse'"):
            cls.from_wire(msg.to_wire() | {"forse": True})
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    if required:
        wire = msg.to_wire()
        del wire[required[0]]
        with pytest.raises(InvalidArgument, match="missing argument"):
            cls.from_wire(wire)


def test_the_lease_operations_are_typed():
    assert set(messages.REQUESTS) >= {"attach", "renew", "detach", "revoke_ack"}
    with pytest.raises(InvalidArgument, match="attach request: wait must be a finite number"):
        messages.AttachRequest.from_wire({"volume": "dg/v", "wait": float("nan")})


def test_every_operation_has_its_types_and_a_handler():
    from vserver.handlers import OPS
    assert set(OPS) == set(messages.OPERATIONS)
    for name, (request, reply) in messages.OPERATIONS.items():
        assert request.OP == name and request.KIND == "request", name
        assert reply.KIND == "reply", name
        assert OPS[name].request is request and OPS[name].reply is reply
    # every message class is reachable: a request, a reply (or part of one), or a push
    assert len(message_types()) >= 60


def test_pushes_round_trip_and_unknown_ones_are_refused():
    push = messages.RevokePush(delegation="d1", volume="dg/v", reason="fence")
    wire = messages.push_to_wire(push)
    assert wire["push"] == "revoke" and messages.push_from_wire(wire) == push
    with pytest.raises(InvalidArgument, match="unknown push"):
        messages.push_from_wire({"push": "explode"})
    with pytest.raises(InvalidArgument, match="reason"):
        messages.push_from_wire({"push": "revoke", "delegation": "d1", "volume": "v"})


def test_a_nested_bad_field_is_named_with_its_path():
    with pytest.raises(InvalidArgument, match=r"fence request: .*incarnation"):
        messages.FenceRequest.from_wire({"coordinator": "dg/c", "victims": [1, {"node": 2}]})
    with pytest.raises(InvalidArgument, match=r"vol_create request: size must be an integer or text"):
        messages.VolCreateRequest.from_wire({"dg": "dg", "name": "v", "size": 1.5})
