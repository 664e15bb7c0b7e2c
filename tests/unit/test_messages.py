"""Typed protocol messages (fencevol/protocol/messages.py): every message type
round-trips through its wire form, and a wrong-typed field is a one-line error
naming the operation and the field."""

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
        return st.none() | strategy(next(a for a in args if a is not type(None)))
    if origin is list:
        return st.lists(strategy(args[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), strategy(args[1]), max_size=3)
    return {str: st.text(max_size=16), bool: st.booleans(), int: st.integers(0, (1 << 64) - 1),
            float: st.floats(0, 1e6)}[tp]


def message_types():
    return [c for c in vars(messages).values()
            if isinstance(c, type) and issubclass(c, Message) and c is not Message]


def instances(cls):
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy(hints[f.name]) for f in dataclasses.fields(cls)})


WRONG = {str: 7, bool: "yes", int: "1", float: "x", dict: [1], list: "x"}


@pytest.mark.parametrize("cls", message_types(), ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_message_round_trips_and_names_a_bad_field(cls, data):
    msg = data.draw(instances(cls))
    assert cls.from_wire(msg.to_wire()) == msg
    hints = typing.get_type_hints(cls)
    field = data.draw(st.sampled_from(dataclasses.fields(cls)))
    tp = hints[field.name]
    base = typing.get_origin(tp) or tp
    if base in WRONG:
        with pytest.raises(InvalidArgument, match=field.name):
            cls.from_wire(msg.to_wire() | {field.name: WRONG[base]})
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
