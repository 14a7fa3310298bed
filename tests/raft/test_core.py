"""RawNode's contract: bad input never corrupts state, API misuse is a typed error."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raft.core import Config, RawNode
from raft.errors import ConfChangeRejected, InvalidMessage, NotLeader, ProposalDropped, RaftError
from raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

from .harness import Net


def fingerprint(node: RawNode) -> tuple[object, ...]:
    return (node.status(), node.term, node.vote, list(node.entries), node.has_ready())


def follower() -> RawNode:
    conf = ConfState(voters=((1, 11), (2, 12), (3, 13)))
    return RawNode(
        Config(id=1),
        rng=random.Random(1),
        incarnation=11,
        snapshot=Snapshot(SnapshotMeta(0, 0, conf), b""),
    )


GOOD = Message(MessageType.APPEND, src=2, dst=1, term=1, incarnation=12)

MALFORMED = [
    ("not a message", "just a string"),
    ("unknown type", replace(GOOD, type=99)),
    ("str term", replace(GOOD, term="1")),
    ("bool index", replace(GOOD, index=True)),
    ("negative commit", replace(GOOD, commit=-1)),
    ("absurd index", replace(GOOD, index=2**64)),
    ("wrong destination", replace(GOOD, dst=7)),
    ("from itself", replace(GOOD, src=1)),
    ("from node 0", replace(GOOD, src=0)),
    ("entries not a list", replace(GOOD, entries=(Entry(1, 1, EntryKind.NORMAL, b"x"),))),
    ("entry gap", replace(GOOD, entries=[Entry(1, 2, EntryKind.NORMAL, b"x")])),
    ("entry term above message", replace(GOOD, entries=[Entry(5, 1, EntryKind.NORMAL, b"x")])),
    ("entry data not bytes", replace(GOOD, entries=[Entry(1, 1, EntryKind.NORMAL, "x")])),
    ("entry kind unknown", replace(GOOD, entries=[Entry(1, 1, 9, b"x")])),
    ("not an entry", replace(GOOD, entries=[(1, 1, 0, b"x")])),
    (
        "entries on a heartbeat",
        replace(GOOD, type=MessageType.HEARTBEAT, entries=[Entry(1, 1, EntryKind.NORMAL, b"")]),
    ),
    ("prev term above term", replace(GOOD, log_term=3)),
    ("snapshot without meta", replace(GOOD, type=MessageType.SNAPSHOT)),
    (
        "snapshot meta inconsistent",
        replace(GOOD, type=MessageType.SNAPSHOT, snapshot=SnapshotMeta(0, 1, ConfState())),
    ),
]


@pytest.mark.parametrize(("why", "msg"), MALFORMED, ids=[w for w, _ in MALFORMED])
def test_malformed_messages_are_rejected_without_touching_state(why: str, msg: object) -> None:
    node = follower()
    before = fingerprint(node)
    err = node.step(msg)  # type: ignore[arg-type]
    assert isinstance(err, InvalidMessage), why
    assert fingerprint(node) == before


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        Message,
        type=st.sampled_from(list(MessageType)) | st.integers(-2, 20),
        src=st.integers(-1, 5) | st.booleans(),
        dst=st.just(1) | st.integers(0, 3),
        term=st.integers(0, 5) | st.text(max_size=2),
        incarnation=st.integers(0, 14),
        index=st.integers(-1, 10) | st.none(),
        log_term=st.integers(0, 5),
        entries=st.lists(
            st.builds(
                Entry,
                st.integers(0, 5),
                st.integers(0, 10),
                st.sampled_from(list(EntryKind)),
                st.binary(max_size=4),
            ),
            max_size=3,
        ),
        commit=st.integers(0, 12),
        reject=st.booleans(),
        hint_index=st.integers(0, 10),
        hint_term=st.integers(0, 5),
        context=st.integers(0, 3),
    )
)
def test_step_never_raises_on_arbitrary_messages(msg: Message) -> None:
    node = follower()
    node.step(msg)
    node.tick()
    if node.has_ready():
        node.advance(node.ready())


def test_proposals_and_reads_on_a_follower_raise_not_leader_with_a_hint() -> None:
    net = Net(3)
    net.elect(1, {1, 2, 3})
    net.deliver()
    with pytest.raises(NotLeader) as info:
        net.node(2).propose(b"x")
    assert info.value.leader_hint == 1
    with pytest.raises(NotLeader):
        net.node(2).read_index("r")
    with pytest.raises(NotLeader):
        net.node(2).propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))


def test_membership_change_rules() -> None:
    net = Net(3)
    net.elect(1, {1, 2, 3})
    leader = net.node(1)
    with pytest.raises(ConfChangeRejected, match="not yet committed"):
        leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))
    net.deliver()
    with pytest.raises(ConfChangeRejected, match="not a learner"):
        leader.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, 2))
    with pytest.raises(ConfChangeRejected, match="not a member"):
        leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 9))
    with pytest.raises(ConfChangeRejected, match="invalid node id"):
        leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 0))
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ConfChangeRejected, match="not yet committed"):
        leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 2))
    net.deliver()
    with pytest.raises(ConfChangeRejected, match="not caught up"):
        leader.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, 4))
    assert leader.conf.learner_ids() == {4}


def test_proposals_are_refused_during_leadership_transfer() -> None:
    net = Net(3)
    net.elect(1, {1, 2, 3})
    net.deliver()
    net.node(1).transfer_leadership(2)
    with pytest.raises(ProposalDropped):
        net.node(1).propose(b"x")
    with pytest.raises(RaftError):
        net.node(1).transfer_leadership(9)
    net.deliver()
    assert net.node(2).status()["role"] == "leader"


def test_ready_advance_misuse_is_a_typed_error() -> None:
    net = Net(1)
    node = net.node(1)
    node.campaign()
    rd = node.ready()
    with pytest.raises(RaftError):
        node.ready()
    with pytest.raises(RaftError):
        node.advance(replace(rd))
    node.advance(rd)
    with pytest.raises(RaftError):
        node.compact(10, b"")


@pytest.mark.parametrize(
    "cfg",
    [
        Config(id=0),
        Config(id=1, election_tick=1, heartbeat_tick=1),
        Config(id=1, max_inflight_msgs=0),
    ],
)
def test_bad_config_is_refused(cfg: Config) -> None:
    with pytest.raises(RaftError):
        RawNode(cfg, rng=random.Random(0), incarnation=1)


def test_restored_entries_must_form_a_log() -> None:
    with pytest.raises(RaftError, match="not a log"):
        RawNode(
            Config(id=1),
            rng=random.Random(0),
            incarnation=1,
            entries=[Entry(1, 1, EntryKind.NORMAL, b""), Entry(1, 3, EntryKind.NORMAL, b"")],
        )


def test_single_node_commits_and_reads_alone() -> None:
    net = Net(1)
    node = net.node(1)
    node.campaign()
    net.pump()
    index = node.propose(b"x")
    node.read_index("r")
    rd = node.ready()
    assert [s.request for s in rd.read_states] == ["r"]
    net.disks[1].persist(rd)
    node.advance(rd)
    net.pump()
    assert node.commit == index
    assert [e.data for e in net.applied[1] if e.kind is EntryKind.NORMAL] == [b"x"]


def test_a_node_without_a_snapshot_asks_for_one_and_never_votes() -> None:
    wiped = RawNode(Config(id=3), rng=random.Random(0), incarnation=99)
    assert not wiped.is_voter()
    wiped.step(Message(MessageType.VOTE, src=2, dst=3, term=5, incarnation=12, index=9, log_term=4))
    resp = wiped.ready().messages
    assert [(m.type, m.reject) for m in resp] == [(MessageType.VOTE_RESP, True)]


def test_removal_that_would_lose_the_quorum_is_refused() -> None:
    net = Net(3)
    net.elect(1, {1, 2, 3})
    net.deliver()
    net.crash(3)
    # Node 3 is down and unheard of in the next CheckQuorum rounds.
    for _ in range(2 * net.node(1).config.election_tick):
        net.node(1).tick()
        net.deliver(lambda m: m.dst != 3)
    with pytest.raises(ConfChangeRejected, match="lose the quorum"):
        net.node(1).propose_conf_change(ConfChange(ConfChangeType.REMOVE, 2))


def test_follower_that_lost_acknowledged_entries_is_sent_them_again() -> None:
    net = Net(3)
    net.elect(1, {1, 2, 3})
    net.deliver()
    for i in range(5):
        net.node(1).propose(b"x%d" % i)
    net.deliver()
    assert net.node(1).progress[3].match == 6
    # n3's disk loses its last three (acknowledged, synced) entries: it restarts
    # with the same incarnation and a shorter log.
    del net.disks[3].entries[-3:]
    net.crash(3)
    net.start(3)
    assert net.node(3).last_index() == 3
    net.node(1).propose(b"y")
    net.deliver()
    assert net.node(3).last_index() == 7
    assert net.node(1).progress[3].match == 7


def test_a_leader_counts_itself_only_once_its_write_behind_is_durable() -> None:
    net = Net(1)
    node = net.node(1)
    node.campaign()
    net.pump()
    index = node.propose(b"x")
    rd = node.ready()
    assert rd.persist_later
    node.advance(rd, persisted=False)
    assert node.commit < index, "committed before its only voter's disk had it"
    node.persisted(rd)
    assert node.commit == index


def test_only_a_leaders_ready_may_be_persisted_later() -> None:
    node = follower()
    node.step(Message(MessageType.APPEND, src=2, dst=1, term=1, incarnation=12))
    rd = node.ready()
    assert not rd.persist_later  # its APPEND_RESP must wait for the disk
    with pytest.raises(RaftError):
        node.advance(rd, persisted=False)


def test_no_snapshot_beyond_what_this_nodes_disk_holds() -> None:
    net = Net(3)
    net.elect(1, {1, 2, 3})
    net.deliver()
    leader = net.node(1)
    leader.propose(b"x")
    rd = leader.ready()
    net.mailbox.extend(rd.early_messages)
    leader.advance(rd, persisted=False)
    net.deliver()  # both followers persist and acknowledge: committed without the leader
    index = rd.entries[-1].index
    assert leader.commit == leader.applied == index
    assert leader.stable_index < index
    with pytest.raises(RaftError, match="persisted"):
        leader.compact(index, b"")
    leader.persisted(rd)
    assert leader.compact(index, b"").meta.index == index


def test_a_leader_deposed_with_a_read_round_open_goes_quiet() -> None:
    # Found by a long hunt: the open round kept has_ready() true on the new
    # follower forever, and the simulator spun at one instant of time.
    net = Net(3)
    net.elect(1, {1, 2, 3})
    net.deliver()
    node = net.node(1)
    node.read_index("r")
    term = node.term
    node.step(Message(MessageType.HEARTBEAT, src=2, dst=1, term=term + 1, incarnation=1002))
    rd = node.ready()
    assert rd.dropped_reads == ["r"]
    node.advance(rd)
    assert not node.has_ready()


def test_a_new_commit_index_waits_for_the_next_append_or_heartbeat() -> None:
    net = Net(3)
    net.elect(1, {1, 2, 3})
    net.deliver()
    leader = net.node(1)
    index = leader.propose(b"x")
    # Deliver the append and the acknowledgements, then look at what is left.
    net.deliver(lambda m: m.type is not MessageType.HEARTBEAT)
    assert leader.commit == index
    assert all(net.node(i).commit < index for i in (2, 3))
    assert not [m for m in net.mailbox if m.type is MessageType.APPEND], (
        "a commit index was sent in an append of its own"
    )
    # The next append carries it ...
    leader.propose(b"y")
    net.pump()
    appends = net.sent(MessageType.APPEND)
    assert appends and all(m.commit == index and m.entries for m in appends)
    net.deliver(lambda m: m.type is not MessageType.HEARTBEAT)
    assert all(net.node(i).commit >= index for i in (2, 3))
    # ... and with nothing more to send, the next heartbeat round does.
    last = leader.commit
    assert all(net.node(i).commit < last for i in (2, 3))
    for _ in range(leader.config.heartbeat_tick):
        leader.tick()
    net.deliver()
    assert all(net.node(i).commit == last for i in (2, 3))
