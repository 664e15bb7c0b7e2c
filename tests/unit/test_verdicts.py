"""Every verdict of tools/check, shown to fire on the history that breaks it and to
stay quiet on the one that does not (tools/testbed/verdicts.py is pure)."""

from testbed.verdicts import History, Record, Write, extents_allocated_once, judge


def owner(slot):
    return 1 if slot < 10 else 2


def history():
    """Node 1 joined at 0 (incarnation 1), was told fenced at 10, rejoined at 20 (2)."""
    return History(fenced={1: [(10.0, 1)]}, joined={1: [(0.0, 1), (20.0, 2)], 2: [(0.0, 1)]})


def test_a_clean_history_has_no_violation():
    writes = [Write(1, 1, 3, 5.0, True, acked=5.5), Write(2, 7, 3, 12.0, True, acked=12.5, takeover=True),
              Write(1, 2, 3, 11.0, False), Write(1, 3, 3, 21.0, True, acked=21.5)]
    disk = [{3: Record(1, 3, 21.0)}, {3: Record(1, 3, 21.0)}]
    assert judge(history(), writes, disk, owner) == []


def test_a_write_after_the_fence_that_succeeded():
    v = judge(history(), [Write(1, 2, 3, 11.0, True)], [{3: None}], owner)
    assert len(v) == 1 and v[0].startswith("(a) node 1's write seq 2 issued +1.000s after")


def test_a_record_after_the_fence_on_disk():
    v = judge(history(), [], [{3: Record(1, 2, 11.0)}], owner)
    assert any(x.startswith("(a) plex 0 slot 3 holds node 1's record issued +1.000s") for x in v), v


def test_a_stalled_write_that_landed_on_the_takeover():
    """Issued at 9.9 (before the fence: looks harmless by its issue time), but on
    disk after node 2's takeover was acknowledged at 12.5."""
    writes = [Write(2, 7, 3, 12.0, True, acked=12.5, takeover=True)]
    v = judge(history(), writes, [{3: Record(2, 7, 12.0)}, {3: Record(1, 1, 9.9)}], owner)
    assert [x[:3] for x in v] == ["(a)", "(b)", "(e)"], v
    assert "plex 1 slot 3 holds node 1's record seq 1 issued 2.600s before node 2's takeover" in v[0]


def test_b_an_acknowledged_write_lost():
    writes = [Write(1, 5, 4, 5.0, True, acked=5.5)]
    v = judge(history(), writes, [{4: Record(1, 4, 4.0)}], owner)
    assert v == ["(b) node 1's acknowledged record seq 5 is missing from slot 4 of plex 0 (found (1, 4))"]
    assert judge(history(), writes, [{4: Record(1, 6, 6.0)}], owner) == []      # superseded


def test_b_a_lost_takeover_write():
    writes = [Write(2, 7, 3, 12.0, True, acked=12.5, takeover=True)]
    v = judge(History(), writes, [{3: None}], owner)
    assert v == ["(b) node 2's acknowledged takeover record seq 7 is missing from slot 3 of plex 0 "
                 "(found None)"]


def test_e_plexes_that_diverged():
    v = judge(History(), [], [{12: Record(2, 1, 1.0)}, {12: Record(2, 2, 2.0)}], owner)
    assert v == ["(e) slot 12 differs between plexes: [(2, 1), (2, 2)]"]


def test_history_fenced_before_respects_rejoins_and_incarnations():
    h = history()
    assert h.fenced_before(1, 9.0) is None
    assert h.fenced_before(1, 15.0) == 10.0
    assert h.fenced_before(1, 25.0) is None        # writing as incarnation 2 now
    assert h.fenced_before(2, 15.0) is None


def test_an_extent_allocated_twice():
    """(f): what two servers managing one group produced (issue 12): the same
    extent in two volumes; and one inside the private region."""
    mib = 1 << 20
    clean = {"dg/a": [("d1", 4 * mib, 16 * mib)], "dg/b": [("d1", 20 * mib, 16 * mib),
                                                           ("d2", 4 * mib, mib)]}
    assert extents_allocated_once(clean, 4 * mib) == []
    twice = clean | {"dg/c": [("d1", 4 * mib, 8 * mib)]}
    (v,) = extents_allocated_once(twice, 4 * mib)
    assert v.startswith("(f)") and "dg/a" in v and "dg/c" in v
    spanning = {"dg/a": [("d1", 4 * mib, 64 * mib)], "dg/b": [("d1", 8 * mib, mib)],
                "dg/c": [("d1", 30 * mib, mib)]}
    assert len(extents_allocated_once(spanning, 4 * mib)) == 2      # both, not just a neighbour
    assert "private region" in extents_allocated_once({"dg/a": [("d1", 0, mib)]}, 4 * mib)[0]
