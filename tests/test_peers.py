"""Peer credentials of real Unix sockets, the principal they name, and the ancestry walk that
tells an agent's descendants from everyone else (real processes, and synthetic process trees
driven through the production walk)."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from quarterdeck.domain.authority import Kind
from quarterdeck.runtime.peers import (
    MAX_ANCESTRY,
    PeerCredentials,
    descends_from,
    peer_credentials,
    proc_parent,
    supervisor_principal,
)


def test_peer_credentials_of_a_socket_pair_name_this_process() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        credentials = peer_credentials(left)
    assert credentials == PeerCredentials(os.getpid(), os.getuid(), os.getgid())


def test_peer_credentials_name_the_connecting_process_not_the_listener(tmp_path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "sys.stdin.readline()",
                path,
            ],
            stdin=subprocess.PIPE,
        )
        try:
            connection, _ = server.accept()
            with connection:
                assert peer_credentials(connection).pid == child.pid
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=10)


def test_supervisor_principal_is_the_os_user_with_its_groups() -> None:
    principal = supervisor_principal(PeerCredentials(os.getpid(), os.getuid(), os.getgid()))
    entry = pwd.getpwuid(os.getuid())
    assert principal.kind is Kind.SUPERVISOR
    assert principal.name == entry.pw_name
    assert principal.uid == os.getuid()
    assert grp.getgrgid(os.getgid()).gr_name in principal.groups
    assert principal.groups == frozenset(
        grp.getgrgid(gid).gr_name for gid in os.getgrouplist(entry.pw_name, os.getgid())
    )
    assert principal.label == f"{entry.pw_name} (uid {os.getuid()})"


def test_a_uid_without_a_passwd_entry_is_named_by_its_number() -> None:
    uid = next(n for n in range(60000, 70000) if not _has_passwd_entry(n))
    principal = supervisor_principal(PeerCredentials(1, uid, os.getgid()))
    assert principal.name == f"uid:{uid}"
    assert principal.uid == uid
    assert principal.groups == frozenset({grp.getgrgid(os.getgid()).gr_name})


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


# --- the ancestry walk on real processes ---------------------------------------------------------


def test_proc_parent_reads_the_kernels_parent() -> None:
    assert proc_parent(os.getpid()) == os.getppid()


def test_real_process_ancestry() -> None:
    assert descends_from(os.getpid(), {os.getpid()})
    assert descends_from(os.getpid(), {os.getppid()})
    assert not descends_from(os.getpid(), set())
    sibling = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"],
                               stdin=subprocess.PIPE)  # fmt: skip
    try:
        assert descends_from(sibling.pid, {os.getpid()})
        assert not descends_from(os.getpid(), {sibling.pid})
    finally:
        assert sibling.stdin is not None
        sibling.stdin.close()
        sibling.wait(timeout=10)
    gone = sibling.pid  # reaped: its /proc entry is gone (unless the pid was reused already)
    if proc_parent(gone) is None:
        assert not descends_from(gone, {os.getpid()})


# --- the ancestry walk on synthetic trees, through the production function ----------------------


@st.composite
def process_trees(draw: st.DrawFn) -> tuple[dict[int, int], set[int], set[int]]:
    """A forest of pids 2..n (each parent smaller, or 1/0 for a root), some vanished, some
    registered as agents."""
    size = draw(st.integers(1, 40))
    parents: dict[int, int] = {}
    for pid in range(2, size + 2):
        parents[pid] = draw(st.sampled_from([0, 1, *range(2, pid)]))
    pids = list(parents)
    vanished = set(draw(st.lists(st.sampled_from(pids), max_size=5)))
    agents = set(draw(st.lists(st.sampled_from([1, *pids]), max_size=5)))
    return parents, vanished, agents


def _reference(parents: dict[int, int], vanished: set[int], agents: set[int]) -> set[int]:
    """Top-down: the agents, then every living child of a member, breadth first."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    members = set(agents)
    frontier = list(agents)
    while frontier:
        pid = frontier.pop()
        for child in children.get(pid, []):
            if child not in vanished and child not in members:
                members.add(child)
                frontier.append(child)
    return members


@settings(max_examples=300, deadline=None)
@given(process_trees())
def test_descends_from_matches_a_top_down_walk(
    tree: tuple[dict[int, int], set[int], set[int]],
) -> None:
    parents, vanished, agents = tree

    def parent_of(pid: int) -> int | None:
        return None if pid in vanished else parents.get(pid)

    expected = _reference(parents, vanished, agents)
    for pid in parents:
        assert descends_from(pid, agents, parent_of) == (pid in expected), pid


def test_a_cyclic_or_endless_ancestry_ends_as_not_descending() -> None:
    assert not descends_from(5, {99}, lambda pid: {5: 6, 6: 7, 7: 5}[pid])
    climbed: list[int] = []

    def endless(pid: int) -> int:
        climbed.append(pid)
        return pid + 1

    assert not descends_from(2, {10**9}, endless)
    assert len(climbed) <= MAX_ANCESTRY
