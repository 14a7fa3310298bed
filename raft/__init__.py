"""raft: a sans-I/O Raft consensus library with a trio runtime.

``raft.core`` is pure (no I/O, no clock, no global randomness); storage,
transport and the runtime drive it.  ``raft.sim`` simulates whole clusters
deterministically from a seed.
"""
